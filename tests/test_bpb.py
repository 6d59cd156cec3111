"""The byte accounting must equal the UTF-8 bytes of the SentencePiece round-tripped documents."""

import json
import os

import numpy as np
import pytest
import torch

from pgolf.bpb import ByteLuts, bits_per_byte, load_tokenizer
from pgolf.datasets import build_dataset
from pgolf.shards import load_tokens

from conftest import DATA, TOKENIZER, VAL_PATTERN

VAL_DOCS = os.path.join(DATA, "docs", "fineweb_sample_val.jsonl")
TRAIN_DOCS = os.path.join(DATA, "docs", "fineweb_sample_train.jsonl")


def round_trip_bytes(sp, path):
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    return sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in docs)


def lookup_bytes(sp, vocab, pattern):
    tokens = load_tokens(pattern, vocab).long()
    return int(ByteLuts(sp, vocab).target_bytes(tokens[:-1], tokens[1:]).sum())


def test_official_tokenizer_byte_total_is_exact():
    sp = load_tokenizer(TOKENIZER, 1024)
    assert lookup_bytes(sp, 1024, VAL_PATTERN) == round_trip_bytes(sp, VAL_DOCS) == 261_920


def test_trained_tokenizer_byte_total_is_exact():
    paths = build_dataset(TRAIN_DOCS, VAL_DOCS, 512)
    sp = load_tokenizer(paths.tokenizer, 512)
    assert sp.vocab_size() == 512 and sp.is_byte(sp.piece_to_id("<0x41>"))
    assert lookup_bytes(sp, 512, paths.val_pattern) == round_trip_bytes(sp, VAL_DOCS)
    # A second build with the same inputs reuses the cached files.
    again = build_dataset(TRAIN_DOCS, VAL_DOCS, 512)
    assert again == paths and os.path.getmtime(again.tokenizer) == os.path.getmtime(paths.tokenizer)


@pytest.mark.parametrize("vocab", [4096, 8192])
def test_larger_vocabularies_build_with_exact_byte_totals(vocab):
    # The spaces' larger vocab choices are built from the shared documents (about 3 s each on 2 cores).
    paths = build_dataset(TRAIN_DOCS, VAL_DOCS, vocab)
    sp = load_tokenizer(paths.tokenizer, vocab)
    assert sp.vocab_size() == vocab
    assert lookup_bytes(sp, vocab, paths.val_pattern) == round_trip_bytes(sp, VAL_DOCS)


def test_bpb_formula():
    # 2 nats/token over 100 tokens spanning 250 bytes.
    assert np.isclose(bits_per_byte(200.0, 100, 250), 2 / np.log(2) * 100 / 250)


def test_boundary_tokens_get_no_leading_space_byte():
    sp = load_tokenizer(TOKENIZER, 1024)
    luts = ByteLuts(sp, 1024)
    word = next(i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith("\u2581") and len(sp.id_to_piece(i)) > 2)
    after_bos = luts.target_bytes(torch.tensor([1]), torch.tensor([word]))
    after_word = luts.target_bytes(torch.tensor([word]), torch.tensor([word]))
    assert int(after_word) == int(after_bos) + 1
