"""pgolf/provenance.py and `pgolf data check`: validation documents never in training, split sizes as expected."""

import os
import shutil

import numpy as np
import pytest

from pgolf.provenance import check_split, dataset_dirs, ProvenanceError
from pgolf.shards import read_shard, write_shard

from conftest import DATA, SHARDS


def doc(*tokens):
    return [1, *tokens]


def write_split(folder, train_shards, val_shards):
    os.makedirs(folder, exist_ok=True)
    for i, tokens in enumerate(train_shards):
        write_shard(os.path.join(folder, f"fineweb_train_{i:06d}.bin"), np.array(tokens, dtype=np.uint16))
    for i, tokens in enumerate(val_shards):
        write_shard(os.path.join(folder, f"fineweb_val_{i:06d}.bin"), np.array(tokens, dtype=np.uint16))
    return str(folder)


VAL = [doc(5, 6, 7), doc(8, 9), doc(10, 11, 12, 13)]


def test_clean_split_counts_documents_across_shard_boundaries(tmp_path):
    # train: a leading fragment (no BOS: no document), then documents, one of them continuing into shard 2
    train = [[7, 7] + doc(5, 6) + doc(20, 21), [22, 23] + doc(8, 9, 9)]
    folder = write_split(tmp_path / "d", train, [sum(VAL[:2], []), VAL[2]])
    report = check_split(folder)
    assert (report.val_docs, report.val_tokens) == (3, 12)
    assert (report.train_docs, report.train_tokens, report.train_shards) == (3, 12, 2)
    assert report.leaks == [] and report.refusal() is None and report.expectation is None
    assert report.summary().endswith("3 training documents (12 tokens, 2 shards); no validation document occurs in training")


def test_a_leaked_document_is_named_even_across_a_shard_boundary(tmp_path):
    # validation document 2 = [1, 10, 11, 12, 13] split over the end of shard 1 and the start of shard 2
    train = [doc(20) + [1, 10, 11], [12, 13] + doc(21) + VAL[1]]
    folder = write_split(tmp_path / "d", train, [sum(VAL, [])])
    report = check_split(folder)
    assert [(leak.val_index, leak.train_file.endswith("000000.bin"), leak.train_offset) for leak in report.leaks] == [
        (2, True, 2), (1, False, 4)]
    assert report.refusal() == (f"{folder}: validation document 2, 5 tokens, occurs in training shard fineweb_train_000000.bin "
                                "at token 2; 1 more validation documents leaked too")


def test_expected_counts(tmp_path):
    folder = write_split(tmp_path / "d", [doc(20)], [sum(VAL, [])])
    assert check_split(folder, expect_docs=3, expect_tokens=12).refusal() is None
    assert check_split(folder, expect_docs=4).refusal() == f"{folder}: the validation split has 3 documents; the given counts has 4"
    assert "has 12 tokens; the given counts has 13" in check_split(folder, expect_tokens=13).refusal()
    # a folder named like the shared sample is held to the sample's own counts
    named = write_split(tmp_path / "fineweb_sample_sp1024", [doc(20)], [sum(VAL, [])])
    assert check_split(named).refusal().endswith("the validation split has 3 documents; the shared sample (../shared/data) has 50")
    with pytest.raises(ProvenanceError, match="holds no fineweb_train"):
        dataset_dirs(str(tmp_path / "d" / ".."))


def test_data_check_on_the_shared_data_and_on_a_planted_copy(tmp_path, capsys):
    from pgolf.cli import main

    assert main(["data", "check", DATA]) == 0
    out = capsys.readouterr().out
    assert "50 validation documents (108,501 tokens, as expected for the shared sample" in out
    assert "no validation document occurs in training" in out
    copy = tmp_path / "data"
    shutil.copytree(DATA, copy, ignore=shutil.ignore_patterns("docs", "official_tiny"))
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shards = copy / "datasets" / os.path.basename(SHARDS)
    val = read_shard(str(shards / "fineweb_val_000000.bin"))
    train = read_shard(str(shards / "fineweb_train_000000.bin"))
    starts, train_starts = np.flatnonzero(val == 1), np.flatnonzero(train == 1)
    planted = val[starts[17]: starts[18]]
    at = int(train_starts[200])
    write_shard(str(shards / "fineweb_train_000000.bin"), np.concatenate([train[:at], planted, train[at:]]))
    assert main(["data", "check", str(copy)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"pgolf: error: {shards}: validation document 17 (\"Monochromatic shrinks the unshakeable runoffs? Thane crenellated "
        f"misuse...\"), {planted.size:,} tokens, occurs in training shard fineweb_train_000000.bin at token {at:,}"]
