"""What `search` commands take from the user: study names, data roots, and the remedies their errors name."""

import hashlib
import json
import os
import re
import shlex
from types import SimpleNamespace

import pytest

from conftest import MICRO_SPACE, SHARDS, TOKENIZER, run_cli
from search.cli import build_parser, main
from search.study import StudyError, check_study_name

def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_name_rule():
    for good in ("s", "demo-20260101-120000", "A.b_c-9", "a..b", "x" * 100):
        assert check_study_name(good) == good
    for bad in ("../x", "/tmp/x", "a/b", "x" * 101, "..", ".", ".hidden", "-x", "a b", "", "ü", "a\n"):
        with pytest.raises(StudyError, match=r"letters, digits, '\.', '_' or '-', starting with a letter or digit"):
            check_study_name(bad)


@pytest.mark.parametrize("command", [
    ["run", "--space", MICRO_SPACE, "--study", "NAME"], ["resume", "NAME"], ["status", "NAME"], ["pareto", "NAME"],
    ["report", "NAME"], ["export", "NAME", "--out", "exported"], ["confirm", "NAME"]])
def test_every_command_refuses_a_name_that_is_not_one_folder(command, tmp_path, monkeypatch, capsys):
    results, cwd = tmp_path / "results", tmp_path / "cwd"
    results.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    outside = str(tmp_path / "outside")
    for name in ("../x", outside, "a/b", "x" * 101):
        assert main([name if part == "NAME" else part for part in command] + ["--results", str(results)]) == 1
        assert "is not allowed: a name is 1-100 letters" in last_error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["cwd", "results"]  # nothing beside the results folder ...
    assert os.listdir(results) == [] and os.listdir(cwd) == []  # ... nor in it, nor in the working directory


def test_the_cli_refuses_a_bad_name_in_one_line(tmp_path):
    done = run_cli("search.cli", "run", "--space", MICRO_SPACE, "--study", "../escape", "--results", str(tmp_path / "r"))
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "search: error: study name '../escape' is not allowed: a name is 1-100 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "r").exists()


def _official_layout(root):
    """A data/ folder laid out as `pgolf data fetch` writes it, on the FineWeb sample's shards."""
    shards = root / "data" / "datasets" / "fineweb10B_sp1024"
    shards.mkdir(parents=True)
    for name in os.listdir(SHARDS):
        (shards / name).symlink_to(os.path.join(SHARDS, name))
    (root / "data" / "tokenizers").mkdir()
    (root / "data" / "tokenizers" / "fineweb_1024_bpe.model").symlink_to(TOKENIZER)


def test_relative_run_data_is_the_working_directorys(tmp_path, monkeypatch):
    from search.runner import _data_root
    from space.spec import load_space

    monkeypatch.chdir(tmp_path)
    own = tmp_path / "spaces" / "mine.toml"
    own.parent.mkdir()
    own.write_text(open(MICRO_SPACE).read().replace('[run]\n', '[run]\ndata = "data"\n'))
    for space in (load_space("challenge"), load_space(str(own))):
        assert _data_root(SimpleNamespace(data=None), space) == str(tmp_path / "data")
        assert _data_root(SimpleNamespace(data="elsewhere"), space) == str(tmp_path / "elsewhere")
        # A resume reads the data the study started with, wherever it is run from.
        assert _data_root(SimpleNamespace(data=None), space, "/started/with") == "/started/with"


def test_fetch_then_run_the_challenge_preset_finds_the_data(tmp_path):
    # `pgolf data fetch` (default --dir data) then `search run --space challenge`, in one folder; --timeout 0
    # makes the study stop before its first trial, after the data check that matters here.
    _official_layout(tmp_path)
    done = run_cli("search.cli", "run", "--space", "challenge", "--study", "c", "--timeout", "0", "--results", "results",
                   "--device", "cpu", cwd=tmp_path)  # the preset's cuda is refused on a machine without one
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "results" / "c" / "study.json").read_text())["data"] == str(tmp_path / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli("search.cli", "run", "--space", "challenge", "--timeout", "0", cwd=empty)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"search: error: data directory {empty / 'data'} does not exist"]
    assert os.listdir(empty) == []


def _fake_export(folder, bpb=2.5):
    """The files `search verify` checks, with a train_gpt.py that echoes the data it was given."""
    folder.mkdir()
    (folder / "final_model.pgolf").write_bytes(b"model")
    (folder / "train_gpt.py").write_text(
        "import os\nprint('data', os.environ['DATA_PATH'], os.environ['TOKENIZER_PATH'])\n"
        "assert os.environ['TOKENIZER_PATH'] == %r\n"
        "print('final_roundtrip_exact val_loss:1.0 val_bpb:%r')\n" % (TOKENIZER, bpb))
    (folder / "submission.json").write_text("{}")
    data = {"train_pattern": "/gone/fineweb_train_*.bin", "val_pattern": "/gone/fineweb_val_*.bin", "tokenizer": "/gone/t.model",
            "vocab_size": 1024}
    (folder / "pgolf.json").write_text(json.dumps({"study": "s", "trial": 0, "cap_bytes": 10**6, "val_bpb_exact": bpb, "data": data,
                                                   "model_sha256": hashlib.sha256(b"model").hexdigest()}))


def test_each_remedy_an_error_names_exists_for_that_command(tmp_path, capsys):
    def accepts(*argv):  # argparse exits on an option the command does not have
        return build_parser().parse_args(argv) is not None

    # A shard folder without its tokenizer: verify names --tokenizer, which it has, and verifies with it.
    export = tmp_path / "export"
    _fake_export(export)
    assert main(["verify", str(export), "--data", SHARDS]) == 1
    assert re.search(r"holds shards but no tokenizer: pass --tokenizer FILE$", last_error(capsys)) and accepts("verify", "d", "--tokenizer", "t")
    assert main(["verify", str(export), "--data", SHARDS, "--tokenizer", TOKENIZER]) == 0
    assert capsys.readouterr().out.startswith(f"verified {export}")

    # A study has no --tokenizer: it says what its --data must be instead.
    assert main(["run", "--space", MICRO_SPACE, "--data", SHARDS, "--results", str(tmp_path / "r")]) == 1
    error = last_error(capsys)
    assert "a study's --data is a data root holding tokenizers/ and datasets/" in error and "--tokenizer" not in error

    # An existing output folder: the search commands replace with --replace (export's --force means "infeasible too").
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "kept").write_text("results")
    assert main(["allocate", "no-checkpoint-needed", "--cap", "1000", "--out", str(existing)]) == 1
    assert last_error(capsys).endswith("(pass --replace to replace them)") and accepts("allocate", "c", "--cap", "1", "--replace")

    # An existing study under a --results folder: the resume command named is the one that finds it.
    results = str(tmp_path / "results")
    assert main(["run", "--space", MICRO_SPACE, "--study", "s", "--timeout", "0", "--results", results]) == 0
    capsys.readouterr()
    assert main(["run", "--space", MICRO_SPACE, "--study", "s", "--results", results]) == 1
    resume = re.search(r"use `(search resume [^`]+)`$", last_error(capsys)).group(1)
    assert resume == f"search resume s --results {results}"
    assert main(shlex.split(resume)[1:] + ["--timeout", "0"]) == 0
    assert (existing / "kept").read_text() == "results"


def test_export_names_its_own_replace_flag(micro_study, tmp_path, capsys):
    results, name = micro_study
    (tmp_path / "kept").write_text("results")
    assert main(["export", name, "--out", str(tmp_path), "--results", str(results)]) == 1
    assert last_error(capsys).endswith("(pass --replace to replace them)")
    assert build_parser().parse_args(["export", name, "--out", "o", "--replace"]).replace
    assert (tmp_path / "kept").read_text() == "results"
