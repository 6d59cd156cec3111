"""Provenance of a data split: no validation document may occur in the training shards, and the validation
split must have the documents and tokens it is known to have (a record was excluded for training on
validation documents its data preparation put into the training shards: openai/parameter-golf #2127).

A document is a run of tokens starting at BOS (id 1), as the challenge's shards store them; the shards of a
split are one stream in file order, so a document may continue into the next shard. Each validation document
is hashed (BLAKE2b of its uint16 tokens); a training document is hashed only when its length is that of some
validation document, so the scan costs little more than reading the shards.
"""

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field

import numpy as np

from pgolf.shards import read_shard, shard_files

BOS_ID = 1


@dataclass(frozen=True)
class Expectation:
    label: str
    docs: int | None
    tokens: int | None


# Known splits by dataset folder name. The official tokens count depends on the vocabulary: not fixed here.
KNOWN_SPLITS = (
    (re.compile(r"fineweb10B_sp\d+.*"), Expectation("the official FineWeb validation split", 50_000, None)),
    (re.compile(r"fineweb_sample_sp1024"), Expectation("the shared sample (../shared/data)", 50, 108_501)),
)


class ProvenanceError(ValueError):
    """A leaked validation document or a validation split of the wrong size; the message names it."""


@dataclass
class Leak:
    val_index: int      # the document's index in the validation split (0-based)
    val_tokens: int
    train_file: str
    train_offset: int   # token offset of the document's BOS in that training shard
    first_words: str = ""


@dataclass
class ProvenanceReport:
    dataset: str
    val_docs: int
    val_tokens: int
    train_docs: int
    train_tokens: int
    train_shards: int
    expectation: Expectation | None
    leaks: list[Leak] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        expected = f", as expected for {self.expectation.label}" if self.expectation and not self.problems else ""
        shards = f"{self.train_shards} shard{'s' if self.train_shards != 1 else ''}"
        leaks = (f"{len(self.leaks)} validation document{'s' if len(self.leaks) > 1 else ''} found in training"
                 if self.leaks else "no validation document occurs in training")
        return (f"{self.dataset}: {self.val_docs:,} validation documents ({self.val_tokens:,} tokens{expected}); "
                f"{self.train_docs:,} training documents ({self.train_tokens:,} tokens, {shards}); {leaks}")

    def refusal(self) -> str | None:
        """One line naming the first problem (a leak before a count), or None when the data is clean."""
        if self.leaks:
            leak = self.leaks[0]
            words = f' ("{leak.first_words}...")' if leak.first_words else ""
            more = f"; {len(self.leaks) - 1} more validation documents leaked too" if len(self.leaks) > 1 else ""
            return (f"{self.dataset}: validation document {leak.val_index}{words}, {leak.val_tokens:,} tokens, occurs in "
                    f"training shard {os.path.basename(leak.train_file)} at token {leak.train_offset:,}{more}")
        return f"{self.dataset}: {self.problems[0]}" if self.problems else None


def _documents(files: list[str]):
    """(file, offset of BOS in that file, tokens) of each document of a split read as one stream; tokens
    before the stream's first BOS belong to no document."""
    pending = None  # (file, offset, list of token chunks) of a document not yet closed
    for path in files:
        tokens = read_shard(path)
        starts = np.flatnonzero(tokens == BOS_ID)
        if pending is not None:
            pending[2].append(tokens[: starts[0] if starts.size else tokens.size])
            if starts.size:
                yield pending[0], pending[1], np.concatenate(pending[2])
                pending = None
        for i, start in enumerate(starts):
            if i + 1 < starts.size:
                yield path, int(start), tokens[start: starts[i + 1]]
            else:
                pending = (path, int(start), [tokens[start:]])
    if pending is not None:
        yield pending[0], pending[1], np.concatenate(pending[2])


def _digest(tokens: np.ndarray) -> bytes:
    return hashlib.blake2b(tokens.astype("<u2").tobytes(), digest_size=16).digest()


def expectation_for(dataset_dir: str) -> Expectation | None:
    name = os.path.basename(os.path.normpath(dataset_dir))
    return next((e for pattern, e in KNOWN_SPLITS if pattern.fullmatch(name)), None)


def check_split(dataset_dir: str, expect_docs: int | None = None, expect_tokens: int | None = None,
                tokenizer=None) -> ProvenanceReport:
    """Check one folder of fineweb_train_*.bin / fineweb_val_*.bin shards. Expectations not given come from
    KNOWN_SPLITS by the folder's name; `tokenizer` (a SentencePieceProcessor) names a leaked document's first words."""
    val_files = shard_files(os.path.join(dataset_dir, "fineweb_val_*.bin"))
    train_files = shard_files(os.path.join(dataset_dir, "fineweb_train_*.bin"))
    known = expectation_for(dataset_dir)
    if expect_docs is not None or expect_tokens is not None:
        known = Expectation("the given counts", expect_docs if expect_docs is not None else (known.docs if known else None),
                            expect_tokens if expect_tokens is not None else (known.tokens if known else None))
    val_docs, by_digest, lengths, val_tokens = [], {}, set(), 0
    for index, (_, _, doc) in enumerate(_documents(val_files)):
        val_docs.append(doc)
        by_digest.setdefault(_digest(doc), index)
        lengths.add(doc.size)
        val_tokens += doc.size
    report = ProvenanceReport(os.path.normpath(dataset_dir), len(val_docs), val_tokens, 0, 0, len(train_files), known)
    for path, offset, doc in _documents(train_files):
        report.train_docs += 1
        report.train_tokens += doc.size
        if doc.size in lengths and (index := by_digest.get(_digest(doc))) is not None:
            words = " ".join(tokenizer.decode(val_docs[index][1:40].tolist()).split()[:8]) if tokenizer else ""
            report.leaks.append(Leak(index, int(doc.size), path, offset, words))
    if known and known.docs is not None and report.val_docs != known.docs:
        report.problems.append(f"the validation split has {report.val_docs:,} documents; {known.label} has {known.docs:,}")
    if known and known.tokens is not None and report.val_tokens != known.tokens:
        report.problems.append(f"the validation split has {report.val_tokens:,} tokens; {known.label} has {known.tokens:,}")
    return report


def dataset_dirs(root: str) -> list[str]:
    """The shard folders under a data root (challenge layout: root/datasets/*/), or root itself when it holds shards."""
    if not os.path.isdir(root):
        raise ProvenanceError(f"data folder {root} does not exist")
    if glob.glob(os.path.join(root, "fineweb_val_*.bin")):
        return [root]
    found = sorted(d for d in glob.glob(os.path.join(root, "datasets", "*"))
                   if glob.glob(os.path.join(d, "fineweb_val_*.bin")) and glob.glob(os.path.join(d, "fineweb_train_*.bin")))
    if not found:
        raise ProvenanceError(f"{root} holds no fineweb_train_*.bin / fineweb_val_*.bin shards (nor under datasets/*/)")
    return found


def tokenizer_for(root: str, dataset_dir: str):
    """The SentencePiece model for a dataset folder named *_sp<V>, if the data root holds one (else None)."""
    match = re.search(r"_sp(\d+)", os.path.basename(os.path.normpath(dataset_dir)))
    roots = (root, os.path.join(dataset_dir, "..", ".."))  # a data root, or a shard folder inside one
    models = sorted(m for r in roots for m in glob.glob(os.path.join(r, "tokenizers", f"*_{match.group(1)}_bpe.model"))) if match else []
    if not models:
        return None
    from pgolf.bpb import load_tokenizer

    return load_tokenizer(models[0])
