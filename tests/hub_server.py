"""A local stand-in for the Hugging Face Hub's file downloads, for tests and for trying the demo offline.

Serves one folder as the files of one dataset repo, the way huggingface_hub downloads them:
    HEAD/GET {endpoint}/datasets/{repo}/resolve/{revision}/{path}
with the headers the client checks (X-Repo-Commit, ETag, Content-Length), single byte ranges
(206 + Content-Range) and the hub's 404 (X-Error-Code: EntryNotFound / RepoNotFound).

    python tests/hub_server.py FOLDER [--repo willdepueoai/parameter-golf] [--port 8765] [--fill-from DATA]
then HF_ENDPOINT=http://127.0.0.1:8765 for the commands that fetch. --fill-from writes FOLDER first: the
official layout, with shards (several times the demo's cut) repeated from DATA's sample shards and its tokenizer.
"""

import argparse
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np

from pgolf.datasets import _file_digest  # the content hash the data cache already keys on

REMOTE_ROOT = "matched_10B_docs2m_seed1337"  # pgolf/fetch.py's: the official files' folder in the repo
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the served folder's one "commit"
RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class HubServer:
    """The server in a thread; `requests` logs (method, path, Range header) of every request."""

    def __init__(self, folder: str, repo: str, port: int = 0, drop_after: int | None = None):
        self.folder, self.repo = os.path.abspath(folder), repo
        self.drop_after = drop_after  # close each GET's connection after this many body bytes (a dropped download)
        self.requests: list[tuple[str, str, str | None]] = []
        self.print_requests = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET"]


def write_shard_file(path: str, tokens) -> None:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def write_official_layout(folder: str, train, val, tokenizer: str) -> None:
    """The repo's files as the official download finds them: sp1024 shards and tokenizer under REMOTE_ROOT."""
    root = os.path.join(folder, REMOTE_ROOT)
    write_shard_file(os.path.join(root, "datasets", "fineweb10B_sp1024", "fineweb_train_000000.bin"), train)
    write_shard_file(os.path.join(root, "datasets", "fineweb10B_sp1024", "fineweb_val_000000.bin"), val)
    os.makedirs(os.path.join(root, "tokenizers"), exist_ok=True)
    shutil.copyfile(tokenizer, os.path.join(root, "tokenizers", "fineweb_1024_bpe.model"))


def _handler(server: HubServer):
    prefix = f"/datasets/{server.repo}/resolve/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # tests read server.requests instead; the command line prints them
            if server.print_requests:
                super().log_message(format, *args)

        def _file(self) -> str | None:
            path = unquote(self.path.split("?")[0])
            if not path.startswith(prefix):
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            revision, _, name = path[len(prefix):].partition("/")
            local = os.path.normpath(os.path.join(server.folder, name))
            if revision not in ("main", COMMIT) or not local.startswith(os.path.abspath(server.folder)) or not os.path.isfile(local):
                self._error(404, "EntryNotFound", f"{name} does not exist on {revision}")
                return None
            return local

        def _error(self, status: int, code: str, message: str) -> None:
            body = f'{{"error": "{message}"}}'.encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _headers(self, status: int, local: str, length: int, content_range: str | None = None) -> None:
            self.send_response(status)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{_file_digest(local)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            if content_range:
                self.send_header("Content-Range", content_range)
            self.end_headers()

        def do_HEAD(self):
            server.requests.append(("HEAD", self.path, self.headers.get("Range")))
            local = self._file()
            if local:
                self._headers(200, local, os.path.getsize(local))

        def do_GET(self):
            server.requests.append(("GET", self.path, self.headers.get("Range")))
            local = self._file()
            if not local:
                return
            size = os.path.getsize(local)
            start, end = 0, size - 1
            match = RANGE.match(self.headers.get("Range") or "")
            if match:
                start = int(match[1])
                end = min(int(match[2]), size - 1) if match[2] else size - 1
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._headers(206, local, end - start + 1, f"bytes {start}-{end}/{size}")
            else:
                self._headers(200, local, size)
            with open(local, "rb") as f:
                f.seek(start)
                body = f.read(end - start + 1)
            if server.drop_after is not None and len(body) > server.drop_after:
                self.wfile.write(body[: server.drop_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the client sees the body end early, as on a dropped connection
                return
            self.wfile.write(body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the repo's files, in the repo's layout")
    parser.add_argument("--repo", default="willdepueoai/parameter-golf")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fill-from", metavar="DATA", help="write FOLDER from a data root holding the sp1024 sample")
    args = parser.parse_args()
    if args.fill_from:
        shards = os.path.join(args.fill_from, "datasets", "fineweb_sample_sp1024")
        train, val = (np.fromfile(os.path.join(shards, f"fineweb_{s}_000000.bin"), dtype="<u2", offset=1024)
                      for s in ("train", "val"))
        write_official_layout(args.folder, np.tile(train, 3), np.tile(val, 3),
                              os.path.join(args.fill_from, "tokenizers", "fineweb_1024_bpe.model"))
    server = HubServer(os.path.abspath(args.folder), args.repo, args.port)
    server.print_requests = True
    print(f"serving {args.folder} as dataset {args.repo}: HF_ENDPOINT={server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
