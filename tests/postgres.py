"""A throw-away PostgreSQL server for tests: its own data folder, a free local port, stopped at the end.

Debian's server binaries (scripts/setup.sh installs package postgresql); never the system's own cluster.
initdb and postgres refuse to run as root, so as root they run as the `postgres` user the package creates.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager


def server_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: scripts/setup.sh installs Debian's postgresql package")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--"] + command if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_server_user(command), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {(done.stderr or done.stdout).strip()}")


@contextmanager
def postgres_server():
    """Yields a postgresql:// URL of a fresh server (trust auth on 127.0.0.1) with a database `pgolf`. Its data
    folder is one of its own under the temporary folder (pytest's are private to root: the server user could
    not enter them), removed at the end."""
    folder = tempfile.mkdtemp(prefix="pgolf-postgres-")
    data = os.path.join(folder, "data")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    try:
        _run([server_binary("initdb"), "-D", data, "--auth=trust", "--username=pgolf", "-E", "UTF8"])
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
        _run([server_binary("pg_ctl"), "-D", data, "-o", options, "-l", os.path.join(folder, "server.log"), "-w", "start"])
        try:
            _run([server_binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "pgolf", "pgolf"])
            yield f"postgresql://pgolf@127.0.0.1:{port}/pgolf"
        finally:
            subprocess.run(_as_server_user([server_binary("pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]), capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
