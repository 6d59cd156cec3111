"""The demo's data and `pgolf data fetch` against a local hub (tests/hub_server.py): the real hub client, no network.

Each command runs in a fresh process, as the hub client reads HF_ENDPOINT and HF_HUB_OFFLINE when imported.
"""

import io
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.datasets import TOKENIZER_SETTINGS
from hub_server import REMOTE_ROOT, HubServer, write_official_layout

REPO = "willdepueoai/parameter-golf"
SHARDS = f"{REMOTE_ROOT}/datasets/fineweb10B_sp1024"
TRAIN_LIMIT, VAL_LIMIT = 900_000, 100_000  # pgolf/demo_data.py's cut sizes
HEADER = 1024


def documents(rng, total: int) -> np.ndarray:
    """Whole documents (BOS, then 20-4000 tokens of the sp1024 range) filling about `total` tokens."""
    docs, size = [], 0
    while size < total:
        doc = np.concatenate([[1], rng.integers(4, 1024, size=int(rng.integers(20, 4000)))])
        docs.append(doc)
        size += doc.size
    return np.concatenate(docs).astype(np.uint16)


def sp1024_tokenizer(rng) -> bytes:
    """A 1024-piece SentencePiece model with the official settings, trained on made-up words (the real one is
    in ../shared/data, which these tests do without)."""
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in "aeiou"]
    lines = [" ".join("".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(rng.integers(5, 40)))
             for _ in range(5000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=1024, minloglevel=2,
                                   num_threads=1, **TOKENIZER_SETTINGS)
    return model.getvalue()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(folder, train tokens, val tokens): the official layout, shards larger than the demo's cut."""
    folder = tmp_path_factory.mktemp("hub")
    rng = np.random.default_rng(0)
    train, val = documents(rng, 1_500_000), documents(rng, 300_000)
    tokenizer = folder / "tokenizer.model"
    tokenizer.write_bytes(sp1024_tokenizer(rng))
    write_official_layout(str(folder / "repo"), train, val, str(tokenizer))
    (folder / "repo" / REMOTE_ROOT / "tokenizers" / "fineweb_1024_bpe.vocab").write_text("<unk>\t0\n")
    return folder / "repo", train, val


def expected_cut(tokens: np.ndarray, limit: int) -> np.ndarray:
    starts = [i for i in np.flatnonzero(tokens == 1) if 0 < i <= limit]
    return tokens[: starts[-1]]


def shard(path) -> np.ndarray:
    header = np.fromfile(path, dtype="<i4", count=256)
    assert tuple(header[:2]) == (20240520, 1)
    tokens = np.fromfile(path, dtype="<u2", offset=HEADER)
    assert tokens.size == header[2]
    return tokens


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed


def run(args, tmp_path, endpoint, offline=False, preexec_fn=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "PGOLF_DATA"}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), PGOLF_CACHE=str(tmp_path / "cache"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300, preexec_fn=preexec_fn)


def demo(tmp_path, endpoint, **kwargs):
    return run(["pgolf.demo_data"], tmp_path, endpoint, **kwargs)


def one_error_line(result, pattern):
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.stderr


def no_partials(tmp_path):
    demo_root = tmp_path / "cache" / "demo-data"
    assert not demo_root.exists() or not [p for p in demo_root.rglob("*") if ".partial" in p.name or ".tmp" in p.name]
    assert not [p for p in (tmp_path / "cache").glob(".demo-data.*")]


def test_demo_data_is_cut_from_the_shards_first_megabytes_once(official, tmp_path):
    folder, train, val = official
    with HubServer(str(folder), REPO) as hub:
        first = demo(tmp_path, hub.url)
        assert first.returncode == 0, first.stderr
        ranges = {path.rsplit("/", 1)[-1]: rng for _, path, rng in hub.gets()}
        assert ranges == {"fineweb_1024_bpe.model": None,  # the tokenizer whole, through hf_hub_download
                          "fineweb_train_000000.bin": f"bytes=0-{HEADER + 2 * TRAIN_LIMIT + 1}",
                          "fineweb_val_000000.bin": f"bytes=0-{HEADER + 2 * VAL_LIMIT + 1}"}
        assert re.search(r"downloading 2\.\d MB from http://127\.0\.0\.1:\d+ \(HF_ENDPOINT\)", first.stdout)
        assert "its first 1,801,026 of 3,0" in first.stdout
        hub.requests.clear()
        second = demo(tmp_path, hub.url)
        assert second.returncode == 0 and hub.requests == [], second.stderr  # nothing downloaded, nothing asked
    root = tmp_path / "cache" / "demo-data"
    assert first.stdout.strip().splitlines()[-1] == second.stdout.strip() == str(root)
    demo_train = shard(root / "datasets" / "fineweb_demo_sp1024" / "fineweb_train_000000.bin")
    demo_val = shard(root / "datasets" / "fineweb_demo_sp1024" / "fineweb_val_000000.bin")
    assert np.array_equal(demo_train, expected_cut(train, TRAIN_LIMIT))
    assert np.array_equal(demo_val, expected_cut(val, VAL_LIMIT))
    assert 0.95 * TRAIN_LIMIT < demo_train.size <= TRAIN_LIMIT and 0.9 * VAL_LIMIT < demo_val.size <= VAL_LIMIT
    assert (root / "tokenizers" / "fineweb_1024_bpe.model").read_bytes() == \
        (folder / REMOTE_ROOT / "tokenizers" / "fineweb_1024_bpe.model").read_bytes()
    readme = (root / "README.md").read_text()
    assert f"{SHARDS}/fineweb_train_000000.bin`, its first 1,801,026 bytes" in readme and "commit 0123456789abcdef" in readme
    assert f"{demo_val.size:,} tokens" in readme
    no_partials(tmp_path)


def test_offline_the_demo_data_is_cut_from_the_cache(official, tmp_path):
    folder, train, val = official
    with HubServer(str(folder), REPO) as hub:
        assert demo(tmp_path, hub.url).returncode == 0
    root = tmp_path / "cache" / "demo-data"
    before = {p.name: p.read_bytes() for p in root.rglob("*.bin")}
    os.rename(root, tmp_path / "first")
    again = demo(tmp_path, closed_port_url(), offline=True)  # no server: only the caches
    assert again.returncode == 0, again.stderr
    assert "HF_HUB_OFFLINE is set: cutting it from the cache" in again.stdout
    assert {p.name: p.read_bytes() for p in root.rglob("*.bin")} == before
    assert "prepared offline" in (root / "README.md").read_text()


def test_offline_with_nothing_cached_says_so(tmp_path):
    one_error_line(demo(tmp_path, closed_port_url(), offline=True), r"HF_HUB_OFFLINE is set and .*fineweb_train_000000\.bin is not in the cache: unset HF_HUB_OFFLINE")
    assert not (tmp_path / "cache" / "demo-data").exists()


def test_a_broken_off_download_resumes_where_it_stopped(official, tmp_path):
    folder, train, val = official
    with HubServer(str(folder), REPO, drop_after=500_000) as hub:
        broken = demo(tmp_path, hub.url)
    one_error_line(broken, r"the download of .*fineweb_train_000000\.bin from http://127\.0\.0\.1:\d+ \(HF_ENDPOINT\) "
                           r"broke off.*: rerun to resume it")
    assert not (tmp_path / "cache" / "demo-data").exists()
    partials = list((tmp_path / "cache" / "downloads").glob("*.partial"))
    assert len(partials) == 1 and partials[0].stat().st_size == 500_000
    no_partials(tmp_path)
    with HubServer(str(folder), REPO) as hub:
        resumed = demo(tmp_path, hub.url)
        assert resumed.returncode == 0, resumed.stderr
        assert "its first 1,801,026 of 3,0" in resumed.stdout and "resuming after the 500,000 bytes" in resumed.stdout
        assert [(path.rsplit("/", 1)[-1], rng) for _, path, rng in hub.gets()] == [
            ("fineweb_train_000000.bin", f"bytes=500000-{HEADER + 2 * TRAIN_LIMIT + 1}"),
            ("fineweb_val_000000.bin", f"bytes=0-{HEADER + 2 * VAL_LIMIT + 1}")]  # the tokenizer: from the hub cache
    demo_train = shard(tmp_path / "cache" / "demo-data" / "datasets" / "fineweb_demo_sp1024" / "fineweb_train_000000.bin")
    assert np.array_equal(demo_train, expected_cut(train, TRAIN_LIMIT))
    assert not list((tmp_path / "cache" / "downloads").glob("*.partial"))


def test_a_missing_file_is_named(official, tmp_path):
    folder, train, val = official
    lacking = tmp_path / "lacking"
    write_official_layout(str(lacking), train, val, str(folder / REMOTE_ROOT / "tokenizers" / "fineweb_1024_bpe.model"))
    os.remove(lacking / SHARDS / "fineweb_val_000000.bin")
    with HubServer(str(lacking), REPO) as hub:
        one_error_line(demo(tmp_path, hub.url), rf"{SHARDS}/fineweb_val_000000\.bin is not on http://127\.0\.0\.1:\d+ "
                                                r"\(HF_ENDPOINT\) \(404\): check --repo")
        one_error_line(run(["pgolf.cli", "data", "fetch", "--dir", "d"], tmp_path, hub.url), r"fineweb_val_000000\.bin is not on .*\(404\)")
    assert not (tmp_path / "cache" / "demo-data").exists() and not (tmp_path / "d").exists()


def test_an_unreachable_endpoint_is_named(tmp_path):
    url = closed_port_url()
    one_error_line(demo(tmp_path, url), rf"cannot download .*: {re.escape(url)} \(HF_ENDPOINT\) cannot be reached .*"
                                        r"check the network or HF_ENDPOINT")
    one_error_line(run(["pgolf.cli", "data", "fetch", "--dir", "d"], tmp_path, url), r"cannot be reached")
    assert not (tmp_path / "cache" / "demo-data").exists() and not (tmp_path / "d").exists()


def small_file_limit():
    # A "full disk" for this process only: files may not grow past 1 MB (EFBIG instead of SIGXFSZ's kill).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


def test_a_full_disk_is_named_and_the_download_resumes_after(official, tmp_path):
    folder, train, val = official
    with HubServer(str(folder), REPO) as hub:
        full = demo(tmp_path, hub.url, preexec_fn=small_file_limit)
        one_error_line(full, r"cannot write .*fineweb_train_000000\.bin.*\.partial: File too large; free some space .* rerun")
        no_partials(tmp_path)
        assert not (tmp_path / "cache" / "demo-data").exists()
        hub.requests.clear()
        assert demo(tmp_path, hub.url).returncode == 0
        assert hub.gets()[0][2] == f"bytes=1000000-{HEADER + 2 * TRAIN_LIMIT + 1}"


def test_data_fetch_downloads_whole_files_through_the_endpoint(official, tmp_path):
    folder, train, val = official
    with HubServer(str(folder), REPO) as hub:
        done = run(["pgolf.cli", "data", "fetch", "--dir", "d"], tmp_path, hub.url)
    assert done.returncode == 0, done.stderr
    for name in ("datasets/fineweb10B_sp1024/fineweb_train_000000.bin", "datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
                 "tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"):
        assert (tmp_path / "d" / name).read_bytes() == (folder / REMOTE_ROOT / name).read_bytes()
    assert not list((tmp_path / "d").rglob("*.partial"))
    offline = run(["pgolf.cli", "data", "fetch", "--dir", "d2"], tmp_path, closed_port_url(), offline=True)
    assert offline.returncode == 0, offline.stderr  # the hub cache serves a second copy offline


def test_the_demo_folder_is_what_resolve_data_prepares(official, tmp_path):
    # The path the main command takes with no data beside the checkout: sp1024 from the cut shards, and the
    # demo space's other vocab sizes built from the documents decoded from them.
    folder, train, val = official
    code = ("from pgolf.datasets import resolve_data; from pgolf.demo_data import demo_data_root; "
            "print(resolve_data(demo_data_root(), 1024).describe()); print(resolve_data(demo_data_root(), 512).describe())")
    with HubServer(str(folder), REPO) as hub:
        done = run(["pgolf.cli", "--help"], tmp_path, hub.url)  # building the parsers (their defaults) fetches nothing
        assert done.returncode == 0 and hub.requests == []
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), PGOLF_CACHE=str(tmp_path / "cache"))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "cache" / "demo-data"
    assert f"train {root}/datasets/fineweb_demo_sp1024/fineweb_train_*.bin" in done.stdout
    assert "fineweb_sp512_" in done.stdout.splitlines()[-1]
    for split, tokens, limit in (("train", train, TRAIN_LIMIT), ("val", val, VAL_LIMIT)):
        lines = (root / "docs" / f"fineweb_demo_{split}.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
        assert len(lines) == np.count_nonzero(expected_cut(tokens, limit) == 1) and "text" in json.loads(lines[0])


def test_default_data_root(monkeypatch, tmp_path):
    from pgolf.datasets import default_data_root, shared_data_root
    from pgolf.demo_data import demo_data_root

    monkeypatch.setenv("PGOLF_DATA", str(tmp_path / "mine"))
    assert default_data_root() == str(tmp_path / "mine")  # PGOLF_DATA first, even where it does not exist
    monkeypatch.delenv("PGOLF_DATA")
    monkeypatch.setenv("PGOLF_CACHE", str(tmp_path / "cache"))
    shared = shared_data_root()
    assert default_data_root() == (shared if os.path.isdir(shared) else demo_data_root())
    assert demo_data_root() == str(tmp_path / "cache" / "demo-data")
