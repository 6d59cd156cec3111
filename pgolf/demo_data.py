"""The demo's data where no data folder is given and ../shared/data is absent: cut once from the official data.

The official sp1024 tokenizer, and demo-sized shards cut at document boundaries from the starts of the
official shards — about 0.9 M training tokens from the first training shard and 0.1 M validation tokens
from the start of the validation split, the sizes of ../shared/data's sample — and their documents as text
(docs/*.jsonl, decoded with that tokenizer, for the other vocab sizes the demo space samples), in a folder of
pgolf's cache, with a README of where each part came from. Only what is cut is downloaded (a Range request for each shard's
first ~2 MB, not its 124-200 MB), through pgolf.hub: HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and the hub cache
apply, a broken-off download resumes, and once the folder exists nothing is downloaded again.

    python -m pgolf.demo_data [--dir DIR]    prepares it now (the main command does so by itself)
"""

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from pgolf import hub
from pgolf.bpb import TokenizerError, load_tokenizer
from pgolf.datacache import BOS_ID, DataError, _publish, cache_dir
from pgolf.fetch import DEFAULT_REPO, REMOTE_ROOT
from pgolf.shards import SHARD_HEADER_BYTES, SHARD_HEADER_INTS, SHARD_MAGIC, SHARD_VERSION, write_shard

VOCAB = 1024
TOKENIZER = f"tokenizers/fineweb_{VOCAB}_bpe.model"
OFFICIAL_DATASET = "datasets/fineweb10B_sp1024"
DEMO_DATASET = "datasets/fineweb_demo_sp1024"  # *_sp1024: resolve_data finds it like any official layout
SPLITS = (("train", 900_000, "the first training shard"), ("val", 100_000, "the validation split"))


def demo_data_root() -> str:
    return os.path.join(cache_dir(), "demo-data")


def is_demo_root(path: str) -> bool:
    return os.path.abspath(path) == os.path.abspath(demo_data_root())


def _log(message: str) -> None:
    print(message, flush=True)  # progress, like the commands' own; the bars and a failure go to stderr


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def cut_at_document(tokens: np.ndarray, limit: int, total: int, what: str) -> np.ndarray:
    """The longest run of whole documents, at most `limit` tokens, from the start of a shard of `total` tokens.
    `tokens` holds the shard's first min(total, limit + 1) tokens: the one after the limit shows whether a
    document ends exactly there."""
    if not tokens.size or tokens[0] != BOS_ID:
        raise DataError(f"{what} does not start with a document (BOS {BOS_ID}): not a challenge shard")
    if total <= limit:
        return tokens[:total]
    starts = np.flatnonzero(tokens[1 : limit + 1] == BOS_ID) + 1
    if not starts.size:
        raise DataError(f"{what}: its first document is longer than {limit:,} tokens, so no whole document fits the demo")
    return tokens[: starts[-1]]


def read_shard_start(path: str, limit: int, what: str) -> tuple[np.ndarray, int]:
    """(first min(total, limit + 1) tokens, total) of a shard's first bytes in `path`, header checked."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(SHARD_HEADER_BYTES), dtype="<i4")
        if header.size != SHARD_HEADER_INTS or int(header[0]) != SHARD_MAGIC or int(header[1]) != SHARD_VERSION:
            raise DataError(f"{what} is not a challenge token shard (magic {SHARD_MAGIC}, version {SHARD_VERSION})")
        total = int(header[2])
        wanted = min(total, limit + 1)
        tokens = np.frombuffer(f.read(2 * wanted), dtype="<u2")
    if tokens.size != wanted:
        raise DataError(f"{path} holds {tokens.size:,} of the {wanted:,} tokens wanted from {what}: remove it and rerun")
    return tokens, total


def write_documents(path: str, tokens: np.ndarray, sp) -> None:
    """The shard's documents as text, {"text": ...} a line: what resolve_data trains and encodes the sampled
    vocab sizes other than 1024 from (the demo space samples sp512 too)."""
    starts = np.flatnonzero(tokens == BOS_ID)
    with open(path, "w", encoding="utf-8") as f:
        for doc in np.split(tokens, starts[1:]):
            f.write(json.dumps({"text": sp.decode(doc[1:].tolist())}, ensure_ascii=False) + "\n")


@dataclass
class Part:
    split: str
    limit: int
    label: str
    remote_path: str
    local: str | None = None  # a file holding the shard's first bytes, once known
    remote: hub.RemoteFile | None = None

    @property
    def nbytes(self) -> int:  # the header and one token past the limit
        return SHARD_HEADER_BYTES + 2 * (self.limit + 1)


@contextmanager
def _locked(folder: str):
    # Two commands started at once (two studies, a study and `python -m pgolf.demo_data`) download once.
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepare_demo_data(root: str | None = None, repo: str = DEFAULT_REPO) -> str:
    """The demo data folder, prepared if it is not there yet: its path."""
    root = os.path.abspath(root or demo_data_root())
    if os.path.isdir(root):
        return root
    downloads = os.path.join(cache_dir(), "downloads")
    with _locked(downloads):
        if os.path.isdir(root):
            return root
        parts = [Part(split, limit, label, f"{REMOTE_ROOT}/{OFFICIAL_DATASET}/fineweb_{split}_000000.bin")
                 for split, limit, label in SPLITS]
        _log(f"pgolf: the demo's data (the default where no data folder is given and ../shared/data is absent) "
             f"is prepared once, in {root}")
        _locate(parts, repo, downloads)
        tokenizer = hub.download_file(repo, f"{REMOTE_ROOT}/{TOKENIZER}")
        for part in parts:
            if part.local is None:
                part.local = hub.download_prefix(part.remote, part.nbytes, downloads)
        _build(root, repo, tokenizer, parts)
    _log(f"pgolf: the demo's data is ready in {root} (see its README.md)")
    return root


def _locate(parts: list[Part], repo: str, downloads: str) -> None:
    """Find each shard's first bytes in a cache, or learn its size and version; then say what will be downloaded."""
    tokenizer_path = f"{REMOTE_ROOT}/{TOKENIZER}"
    if hub.offline():
        for part in parts:
            part.local = hub.cached_prefix(downloads, part.remote_path, part.nbytes) or hub.cached_file(repo, part.remote_path)
            if part.local is None:
                raise hub.HubError(f"HF_HUB_OFFLINE is set and the start of {part.remote_path} is not in the cache: "
                                   "unset HF_HUB_OFFLINE to download it")
        _log("  HF_HUB_OFFLINE is set: cutting it from the cache")
        return
    plan = []
    if hub.cached_file(repo, tokenizer_path) is None:
        size = hub.remote_file(repo, tokenizer_path).size
        plan.append((f"{tokenizer_path}, whole", size))
    for part in parts:
        part.remote = hub.remote_file(repo, part.remote_path)
        full = hub.cached_file(repo, part.remote_path)
        if full and os.path.basename(os.path.realpath(full)) == part.remote.etag:
            part.local = full  # the whole shard is in the hub cache already (the hub names its blobs by ETag)
        elif not os.path.exists(target := hub.prefix_file(downloads, part.remote, part.nbytes)):
            wanted = min(part.nbytes, part.remote.size)
            have = os.path.getsize(target + ".partial") if os.path.exists(target + ".partial") else 0
            resume = f", resuming after the {have:,} bytes a broken-off download left" if 0 < have < wanted else ""
            plan.append((f"{part.remote_path}, its first {wanted:,} of {part.remote.size:,} bytes{resume}", wanted - have))
    if plan:
        _log(f"  downloading {_mb(sum(size for _, size in plan))} from {hub.endpoint()}, dataset {repo}:")
        for what, size in plan:
            _log(f"    {what} ({_mb(size)})")
    else:
        _log("  everything it needs is in the cache already")


def _build(root: str, repo: str, tokenizer: str, parts: list[Part]) -> None:
    """Cut the shards and write the folder beside `root`, then rename it into place: never a half folder."""
    parent = os.path.dirname(root)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".demo-data.", dir=parent)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the data from the machine's other users
    except OSError as exc:
        raise hub.failure(exc, root) from None
    try:
        os.makedirs(os.path.join(staging, "tokenizers"))
        os.makedirs(os.path.join(staging, DEMO_DATASET))
        shutil.copyfile(tokenizer, os.path.join(staging, TOKENIZER))
        os.makedirs(os.path.join(staging, "docs"))
        sp = load_tokenizer(tokenizer, VOCAB)
        rows = []
        for part in parts:
            tokens, total = read_shard_start(part.local, part.limit, part.remote_path)
            cut = cut_at_document(tokens, part.limit, total, part.remote_path)
            name = f"{DEMO_DATASET}/fineweb_{part.split}_000000.bin"
            write_shard(os.path.join(staging, name), cut)
            write_documents(os.path.join(staging, f"docs/fineweb_demo_{part.split}.jsonl"), cut, sp)
            rows.append((name, part, cut, total))
        with open(os.path.join(staging, "README.md"), "w") as f:
            f.write(_readme(repo, rows))
        _publish(staging, root)
    except TokenizerError as exc:
        raise DataError(f"{exc} (downloaded as {REMOTE_ROOT}/{TOKENIZER} from {hub.endpoint()})") from None
    except OSError as exc:
        raise hub.failure(exc, root) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _readme(repo: str, rows) -> str:
    version = next((f"commit {p.remote.commit}" for _, p, _, _ in rows if p.remote), "the cached version (prepared offline)")
    lines = [
        "# The demo's data",
        "",
        "Prepared by pgolf (pgolf/demo_data.py) for a command given no data folder on a checkout without",
        "../shared/data. Cut from the official Parameter Golf data: Hugging Face dataset",
        f"`{repo}`, {version}, as served by {hub.endpoint()}.",
        "",
        "| path | what | cut from |",
        "|---|---|---|",
        f"| `{TOKENIZER}` | the official sp1024 tokenizer, whole | `{REMOTE_ROOT}/{TOKENIZER}` |",
    ]
    doc_rows = [f"| `docs/fineweb_demo_{p.split}.jsonl` | the documents of `{name}` as text (`{{\"text\": ...}}` a line), "
            "decoded with the tokenizer above: what other vocab sizes' tokenizers and shards are built from | the same |"
            for name, p, _, _ in rows]
    for name, part, cut, total in rows:
        docs = int(np.count_nonzero(cut == BOS_ID))
        lines.append(f"| `{name}` | {cut.size:,} tokens, {docs:,} whole documents: the start of {part.label} "
                     f"({total:,} tokens), cut at the last document boundary within {part.limit:,} tokens "
                     f"| `{part.remote_path}`, its first {part.nbytes:,} bytes |")
    lines += doc_rows + [
        "",
        "Shard format as in the challenge: 256 little-endian int32 header values (magic 20240520, version 1,",
        "token count), then the tokens as little-endian uint16; every document starts with BOS (id 1).",
        "Delete this folder to prepare it again; PGOLF_DATA and --data take priority over it.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgolf.demo_data", description="prepare the demo's data folder now")
    parser.add_argument("--dir", help="where (default: %s)" % demo_data_root())
    parser.add_argument("--repo", default=DEFAULT_REPO)
    args = parser.parse_args(argv)
    try:
        print(prepare_demo_data(args.dir, args.repo))
    except DataError as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
