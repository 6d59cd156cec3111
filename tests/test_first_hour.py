"""What a new user types in the first hour: relative paths typed in one folder and read from another, numbers out
of range in flags and space files. Each bad input is one line, a non-zero exit, and nothing created."""

import json
import os
import subprocess
import sys

import pytest

from conftest import MICRO_SPACE, run_cli
from search.cli import main
from test_search import micro_with, one_error_line


@pytest.mark.parametrize("flags, message", [
    (["--sampler-seed", "-7"], r"argument --sampler-seed: must be an integer >= 0 and <= 4294967295, got -7"),
    (["--trials", "-3"], r"argument --trials: must be an integer >= 1, got -3"),
    (["--timeout", "-5"], r"argument --timeout: must be a number >= 0, got -5"),
    (["--workers", "0"], r"argument --workers: must be an integer >= 1, got 0"),
    (["--timeout", "nan"], r"argument --timeout: 'nan' is not a finite number"),
    (["--cpus-per-trial", "0"], r"argument --cpus-per-trial: must be a number > 0, got 0"),
    (["--rerun-seeds", "0"], r"argument --rerun-seeds: must be an integer >= 1, got 0"),
])
def test_numeric_flags_out_of_range_are_one_line_before_anything_is_created(flags, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--space", MICRO_SPACE, "--study", "s", *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1 and message in lines[0].replace("\\", ""), lines
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("replace, message", [
    (("train_seconds = 3.0", "train_seconds = nan"), r"caps.train_seconds is not a finite number"),
    (("choices = [32, 48]", "choices = [32, -48]"), r"dims.'model.model_dim': -48 is negative"),
    (("low = 1\nhigh = 2", "low = 1.5\nhigh = 2"), r"dims.'model.num_layers': 1.5 is not an integer"),
    (("choices = [32, 48]", "choices = [32, 48]\n[dims.\"train.seq_len\"]\nchoices = [64, 100]"),
     r"dims.'train.seq_len' = 100: train.batch_tokens 1024 must be a positive multiple of train.seq_len 100"),
])
def test_numeric_space_values_out_of_range_are_one_line(replace, message, tmp_path):
    space = micro_with(tmp_path, "bad.toml", replace=replace)
    one_error_line(run_cli("search.cli", "run", "--space", space, "--study", "s", "--results", str(tmp_path / "r")), message)
    assert not (tmp_path / "r").exists()


def test_a_relative_sqlite_storage_is_stored_absolute_and_resumes_from_another_folder(tmp_path):
    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir()
    other.mkdir()
    done = run_cli("search.cli", "run", "--space", MICRO_SPACE, "--study", "s1", "--trials", "1", "--storage",
                   "sqlite:///rel.db", cwd=first)
    assert done.returncode == 0, done.stderr
    stored = json.loads((first / "results" / "s1" / "study.json").read_text())["storage"]
    assert stored == f"sqlite:///{first / 'rel.db'}"
    done = run_cli("search.cli", "resume", "s1", "--trials", "2", "--results", "../first/results", cwd=other)
    assert done.returncode == 0, done.stderr
    assert os.listdir(other) == []  # no empty rel.db left here
    assert "2/2 done" in done.stdout


def test_a_storage_file_that_is_gone_is_named_and_not_created(tmp_path):
    study = tmp_path / "results" / "s"
    study.mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"name": "s", "space": {}, "space_source": "", "storage": "sqlite:///gone.db"}))
    one_error_line(run_cli("search.cli", "status", "s", cwd=tmp_path), r"its storage file gone.db does not exist \(a relative path")
    assert not (tmp_path / "gone.db").exists()


def test_an_output_folder_that_is_a_file_is_named(micro_study, tmp_path):
    results, name = micro_study
    taken = tmp_path / "taken"
    taken.write_text("mine")
    one_error_line(run_cli("search.cli", "export", name, "--results", str(results), "--out", "taken", "--trial", "0",
                           "--force", "--skip-legality", cwd=tmp_path),
                   r"output .*taken is a file, not a folder")
    assert taken.read_text() == "mine"


def test_status_into_a_pipe_whose_reader_left_ends_quietly(micro_study):
    """`search status | head -1`: the reader closes the pipe before the table is written; no traceback."""
    results, name = micro_study
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "search.cli", "status", name, "--results", str(results)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 141  # 128 + SIGPIPE, as a Unix tool ended by it
