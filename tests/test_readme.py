"""The README's commands, as written, are tests: the lines of its first-session and cluster blocks run from a
fresh working directory, with relative paths and the default results folder, the study's size shrunk by
flags the README documents. A README step that stops working fails here."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import MICRO_SPACE

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")
BIN = os.path.dirname(sys.executable)


def readme_commands(block: str) -> list[str]:
    """The command lines of the README's `<!-- readme-commands: BLOCK -->` code block, comments dropped."""
    with open(README, encoding="utf-8") as f:
        found = re.search(rf"<!-- readme-commands: {block} -->\s*```bash\n(.*?)```", f.read(), re.S)
    assert found, f"README.md has no readme-commands block {block!r}"
    return [" ".join(shlex.split(line, comments=True)) for line in found.group(1).splitlines() if shlex.split(line, comments=True)]


def shrunk(lines: list[str], replacements: dict[str, str]) -> list[str]:
    """The lines with the test's substitutions; each must apply somewhere, so a README edit updates this test."""
    unused = [old for old in replacements if not any(old in line for line in lines)]
    assert not unused, f"README lines changed: {unused} no longer occur; update the substitutions"
    for old, new in replacements.items():
        lines = [line.replace(old, new) for line in lines]
    return lines


def run_line(line: str, cwd, exported: dict | None = None) -> subprocess.CompletedProcess | None:
    """Run one README line as a user would: `search` is this environment's console script, `ray` too; an
    `export NAME=VALUE` line goes into `exported`, the environment of the lines after it."""
    words = shlex.split(line)
    if words[0] == "export":
        exported.update(word.split("=", 1) for word in words[1:])
        return None
    command = {"search": [sys.executable, "-m", "search.cli"], "ray": [os.path.join(BIN, "ray")]}[words[0]] + words[1:]
    env = {k: v for k, v in os.environ.items() if k not in ("PGOLF_RESULTS", "RAY_AUTH_MODE")}  # as on a fresh shell
    done = subprocess.run(command, cwd=cwd, env={**env, **(exported or {})}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README line failed: {line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.timeout(1200)
def test_the_first_session_block_runs_as_written_from_a_fresh_folder(tmp_path):
    lines = shrunk(readme_commands("first-session"), {
        "--space demo": f"--space {MICRO_SPACE}", "--trials 12": "--trials 2", "--trials 14": "--trials 3",
        "--seeds 3": "--seeds 2"})
    work = tmp_path / "work"
    work.mkdir()
    for line in lines:
        run_line(line, work)
    assert (work / "results" / "first" / "pareto.html").is_file() and (work / "submission" / "train_gpt.py").is_file()
    # The study stored its paths resolved: another folder reads it with --results, and nothing lands there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = run_line(f"search status first --results {work / 'results'}", elsewhere)
    assert "first" in status.stdout and os.listdir(elsewhere) == []


@pytest.mark.timeout(1200)
def test_the_cluster_block_runs_on_a_local_ray_and_a_postgres_database(tmp_path, postgres_url):
    from postgres import free_port

    port, temp = free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    lines = readme_commands("cluster")
    skipped = {"ray start --address=HEAD:6379": "a second node (tests/test_tune.py runs two)",
               "createdb pgolf": "the postgres_url fixture creates the database"}
    assert all(line in lines for line in skipped), "README cluster lines changed: update this test"
    lines = shrunk([line for line in lines if line not in skipped], {
        "--port=6379": f"--port={port} --num-cpus=2 --num-gpus=0 --temp-dir={temp}", "HEAD:6379": f"127.0.0.1:{port}",
        "--space challenge": f"--space {MICRO_SPACE}", "postgresql://user@dbhost/pgolf": postgres_url,
        "--workers 8 --gpus-per-trial 1": "--workers 2 --gpus-per-trial 0 --trials 2",
        "search resume c1": "search resume c1 --trials 3"})
    exported = {}
    try:
        for line in lines:
            run_line(line, tmp_path, exported)
        assert (tmp_path / "results" / "c1" / "tune").is_dir()
        trained = [d for d in (tmp_path / "results" / "c1" / "trials").iterdir() if (d / "metrics.json").is_file()]
        assert trained, "no Tune trial finished"
    finally:
        stop_ray_under(temp)


def stop_ray_under(temp: str) -> None:
    """End the Ray this test started, and no other (`ray stop` would end every Ray on the machine): its
    processes name its temp folder in their command lines; the agents they started end with them."""
    assert len(temp) > len("/tmp/ray")  # never an empty or short pattern that other processes' lines contain

    def ours():
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if temp.encode() in f.read() and int(pid) != os.getpid():
                        found.append(int(pid))
            except OSError:
                pass
        return found

    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while ours() and time.time() < deadline:
            time.sleep(0.2)
    shutil.rmtree(temp, ignore_errors=True)
