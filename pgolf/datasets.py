"""Where a run's tokens come from: the official shards, or a tokenizer + shards built for any vocab size.

Data roots are laid out like the challenge's `data/` folder:
    DIR/tokenizers/fineweb_<V>_bpe.model
    DIR/datasets/<name>_sp<V>/fineweb_train_*.bin, fineweb_val_*.bin
    DIR/docs/*train*.jsonl, *val*.jsonl   (documents, {"text": ...} per line; optional)
For a vocab size with no shards under DIR, a SentencePiece BPE tokenizer (settings of the official one:
byte fallback, nmt_nfkc, split digits, pad/bos/eos/unk = 0/1/2/3) is trained on the train documents
and both document sets are encoded into shards. Both land in a cache keyed by a hash of the documents
and settings, so the next run with the same inputs reuses them.
"""

import glob
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from pgolf.bpb import TokenizerError, load_tokenizer
from pgolf.datacache import BOS_ID, DataError, _publish, cache_dir  # noqa: F401 (BOS_ID, cache_dir: for importers)
from pgolf.shards import ShardError, write_shard

SHARD_TOKENS = 100_000_000  # the challenge's shard size
TOKENIZER_SETTINGS = dict(model_type="bpe", character_coverage=0.999, split_digits=True, byte_fallback=True,
                          hard_vocab_limit=False, add_dummy_prefix=False, normalization_rule_name="nmt_nfkc",
                          pad_id=0, bos_id=1, eos_id=2, unk_id=3)
BUILD_VERSION = 1  # bump when the build recipe changes, so old cache entries are not reused


class ShardsWithoutTokenizer(DataError):
    """A folder of shards given without their tokenizer. The remedy named (--tokenizer) is for the commands that
    have that flag; a caller without it catches this and names its own."""


@dataclass
class DataPaths:
    train_pattern: str
    val_pattern: str
    tokenizer: str
    vocab_size: int

    def describe(self) -> str:
        return f"train {self.train_pattern}, val {self.val_pattern}, tokenizer {self.tokenizer}"


def shared_data_root() -> str:
    """PGOLF_DATA, else the shared data folder beside the project checkout (../shared/data)."""
    if os.environ.get("PGOLF_DATA"):
        return os.environ["PGOLF_DATA"]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.normpath(os.path.join(here, "..", "shared", "data"))


def default_data_root() -> str:
    """PGOLF_DATA, else ../shared/data beside the checkout when it is there, else the demo's data folder in the
    cache, which resolve_data prepares on first use (pgolf/demo_data.py). Only a path: nothing is fetched here."""
    shared = shared_data_root()
    if os.environ.get("PGOLF_DATA") or os.path.isdir(shared):
        return shared
    from pgolf.demo_data import demo_data_root  # imported here: demo_data builds on this module

    return demo_data_root()


def _official_layout(root: str, vocab_size: int) -> DataPaths | None:
    tokenizers = sorted(glob.glob(os.path.join(root, "tokenizers", f"*_{vocab_size}_bpe.model")))
    datasets = sorted(d for d in glob.glob(os.path.join(root, "datasets", f"*_sp{vocab_size}")) if os.path.isdir(d))
    for d in datasets:
        if glob.glob(os.path.join(d, "fineweb_train_*.bin")) and glob.glob(os.path.join(d, "fineweb_val_*.bin")):
            if tokenizers:
                return DataPaths(os.path.join(d, "fineweb_train_*.bin"), os.path.join(d, "fineweb_val_*.bin"),
                                 tokenizers[0], vocab_size)
    return None


def _shard_dir_layout(root: str, tokenizer: str | None, vocab_size: int) -> DataPaths | None:
    if glob.glob(os.path.join(root, "fineweb_train_*.bin")) and glob.glob(os.path.join(root, "fineweb_val_*.bin")):
        if tokenizer is None:
            raise ShardsWithoutTokenizer(f"{root} holds shards but no tokenizer: pass --tokenizer FILE")
        return DataPaths(os.path.join(root, "fineweb_train_*.bin"), os.path.join(root, "fineweb_val_*.bin"), tokenizer, vocab_size)
    return None


def document_files(root: str) -> tuple[str, str] | None:
    docs = os.path.join(root, "docs")
    train = sorted(glob.glob(os.path.join(docs, "*train*.jsonl")))
    val = sorted(glob.glob(os.path.join(docs, "*val*.jsonl")))
    return (train[0], val[0]) if train and val else None


def resolve_data(root: str, vocab_size: int, tokenizer: str | None = None) -> DataPaths:
    """Shards and tokenizer for `vocab_size` under `root`, building and caching them if needed."""
    if not os.path.isdir(root):
        from pgolf.demo_data import is_demo_root, prepare_demo_data

        if not is_demo_root(root):
            raise DataError(f"data directory {root} does not exist")
        prepare_demo_data(root)  # the default where no data is beside the checkout: fetched once
    paths = _shard_dir_layout(root, tokenizer, vocab_size)
    if paths is None and tokenizer is None:
        paths = _official_layout(root, vocab_size)
    if paths is None:
        docs = document_files(root)
        if docs is None:
            raise DataError(f"no sp{vocab_size} shards under {root} and no docs/*train*.jsonl + *val*.jsonl to build them from")
        paths = build_dataset(docs[0], docs[1], vocab_size, tokenizer)
    load_tokenizer(paths.tokenizer, vocab_size)  # fails early, with the path, on a mismatched tokenizer
    return paths


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_documents(path: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{number}: not a JSON object with a \"text\" field") from None
    if not texts:
        raise DataError(f"{path} holds no documents")
    return texts


def train_tokenizer(train_docs: str, vocab_size: int) -> str:
    """Path of a cached SentencePiece BPE model with `vocab_size` pieces trained on `train_docs`."""
    import sentencepiece as spm

    key = hashlib.sha256(f"{_file_digest(train_docs)}|{vocab_size}|{TOKENIZER_SETTINGS}|{BUILD_VERSION}".encode()).hexdigest()[:16]
    target_dir = os.path.join(cache_dir(), "tokenizers", key)
    model = os.path.join(target_dir, f"fineweb_{vocab_size}_bpe.model")
    if os.path.exists(model):
        return model
    os.makedirs(os.path.dirname(target_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{key}.", dir=os.path.dirname(target_dir))
    try:
        text_file = os.path.join(staging, "docs.txt")
        with open(text_file, "w", encoding="utf-8") as f:
            for text in read_documents(train_docs):
                f.write(text.replace("\n", " ") + "\n")
        try:
            spm.SentencePieceTrainer.train(input=text_file, model_prefix=os.path.join(staging, f"fineweb_{vocab_size}_bpe"),
                                           vocab_size=vocab_size, num_threads=os.cpu_count() or 1,
                                           minloglevel=2, **TOKENIZER_SETTINGS)
        except RuntimeError as exc:
            raise TokenizerError(f"cannot train a {vocab_size}-piece tokenizer on {train_docs}: {str(exc).strip().splitlines()[-1]}") from None
        os.remove(text_file)
        _publish(staging, target_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def encode_documents(texts: list[str], tokenizer_path: str) -> np.ndarray:
    """BOS + tokens of each document, concatenated (the challenge's shard content)."""
    sp = load_tokenizer(tokenizer_path)
    pieces = []
    for ids in sp.encode(texts, out_type=int):
        pieces.append(np.asarray([BOS_ID] + ids, dtype=np.uint16))
    return np.concatenate(pieces)


def write_shards(tokens: np.ndarray, directory: str, split: str) -> None:
    for i, start in enumerate(range(0, max(tokens.size, 1), SHARD_TOKENS)):
        write_shard(os.path.join(directory, f"fineweb_{split}_{i:06d}.bin"), tokens[start : start + SHARD_TOKENS])


def build_dataset(train_docs: str, val_docs: str, vocab_size: int, tokenizer: str | None = None) -> DataPaths:
    """Tokenizer (trained unless given) and train/val shards for the documents, cached by content."""
    tokenizer = tokenizer or train_tokenizer(train_docs, vocab_size)
    key = hashlib.sha256(
        f"{_file_digest(train_docs)}|{_file_digest(val_docs)}|{_file_digest(tokenizer)}|{BUILD_VERSION}".encode()
    ).hexdigest()[:16]
    target = os.path.join(cache_dir(), "datasets", f"fineweb_sp{vocab_size}_{key}")
    if not os.path.isdir(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{key}.", dir=os.path.dirname(target))
        try:
            write_shards(encode_documents(read_documents(train_docs), tokenizer), staging, "train")
            write_shards(encode_documents(read_documents(val_docs), tokenizer), staging, "val")
            _publish(staging, target)
        except ShardError as exc:
            raise DataError(str(exc)) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return DataPaths(os.path.join(target, "fineweb_train_*.bin"), os.path.join(target, "fineweb_val_*.bin"), tokenizer, vocab_size)
