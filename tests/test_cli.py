"""`pgolf run` / `pgolf eval` and the standalone script, each in a fresh process on the real data."""

import json
import os
import re
import shutil

import pytest

from pgolf.configfiles import config_to_toml

from conftest import DATA, TOKENIZER, run_cli, small_config

REQUIRED = ("val_bpb_pre", "val_bpb_post", "artifact_bytes", "code_bytes", "model_bytes", "bytes_by_group",
            "train_seconds", "eval_seconds", "steps", "train_tokens", "params")


def write_config(tmp_path, config, name="c.toml"):
    path = tmp_path / name
    path.write_text(config_to_toml(config))
    return str(path)


def one_error_line(result, pattern):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    config = small_config(model=dict(loop_start=0, loop_len=1, loop_repeats=2), eval=dict(repeats=3))
    out = tmp / "out"
    result = run_cli("pgolf.cli", "run", write_config(tmp, config), "--data", DATA, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_run_writes_the_artifact_and_metrics(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert all(key in metrics for key in REQUIRED)
    assert metrics["model_bytes"] == (finished_run / "final_model.pgolf").stat().st_size
    assert metrics["code_bytes"] == (finished_run / "train_gpt.py").stat().st_size
    assert metrics["artifact_bytes"] == metrics["model_bytes"] + metrics["code_bytes"]
    assert sum(metrics["bytes_by_group"].values()) == metrics["artifact_bytes"]
    assert metrics["eval"]["repeats"] == 3 and metrics["config"]["model"]["loop_repeats"] == 2
    assert metrics["steps"] == 4 and 1.0 < metrics["val_bpb_post"] < 5.0


def test_eval_in_a_fresh_process_reproduces_the_score(finished_run):
    result = run_cli("pgolf.cli", "eval", str(finished_run))
    assert result.returncode == 0, result.stderr
    assert "identical" in result.stdout


def test_standalone_script_scores_the_model_without_pgolf(finished_run, tmp_path):
    for name in ("train_gpt.py", "final_model.pgolf"):
        shutil.copy(finished_run / name, tmp_path / name)
    assert "pgolf." not in (tmp_path / "train_gpt.py").read_text().replace("pgolf/", "")
    env = {"EVAL_ONLY": "1", "DATA_PATH": os.path.join(DATA, "datasets", "fineweb_sample_sp1024"),
           "TOKENIZER_PATH": TOKENIZER, "PYTHONPATH": "", "DEVICE": "cpu"}
    result = run_cli("train_gpt", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    exact = float(re.search(r"final_roundtrip_exact val_loss:\S+ val_bpb:(\S+)", result.stdout).group(1))
    assert exact == json.loads((finished_run / "metrics.json").read_text())["val_bpb_post"]


def test_truncated_artifact_is_one_clear_error(finished_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(finished_run, broken)
    blob = (broken / "final_model.pgolf").read_bytes()
    (broken / "final_model.pgolf").write_bytes(blob[: len(blob) // 2])
    one_error_line(run_cli("pgolf.cli", "eval", str(broken)), r"final_model.pgolf: model file is truncated")


def test_unknown_config_key_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nwidth = 3\n")
    out = tmp_path / "out"
    one_error_line(run_cli("pgolf.cli", "run", str(path), "--out", str(out)), r"unknown config key model\.width")
    assert not out.exists()


def test_tokenizer_vocab_mismatch_is_one_clear_error(tmp_path):
    from pgolf.datasets import train_tokenizer

    other = train_tokenizer(os.path.join(DATA, "docs", "fineweb_sample_train.jsonl"), 512)
    out = tmp_path / "out"
    result = run_cli("pgolf.cli", "run", write_config(tmp_path, small_config()), "--data",
                     os.path.join(DATA, "datasets", "fineweb_sample_sp1024"), "--tokenizer", other, "--out", str(out))
    one_error_line(result, r"has 512 pieces but the config's vocab_size is 1024")
    assert not out.exists()


def test_truncated_shard_is_one_clear_error(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    source = os.path.join(DATA, "datasets", "fineweb_sample_sp1024")
    shutil.copy(os.path.join(source, "fineweb_val_000000.bin"), shards)
    data = open(os.path.join(source, "fineweb_train_000000.bin"), "rb").read()
    (shards / "fineweb_train_000000.bin").write_bytes(data[: len(data) - 7])
    out = tmp_path / "out"
    result = run_cli("pgolf.cli", "run", write_config(tmp_path, small_config()), "--data", str(shards),
                     "--tokenizer", TOKENIZER, "--out", str(out))
    one_error_line(result, r"fineweb_train_000000.bin is truncated")
    assert not out.exists()


def test_nan_loss_is_one_clear_error_and_leaves_nothing(tmp_path):
    config = small_config(train=dict(iterations=20, matrix_lr=1e30, tied_embed_lr=1e30, scalar_lr=1e30))
    out = tmp_path / "out"
    one_error_line(run_cli("pgolf.cli", "run", write_config(tmp_path, config), "--out", str(out)),
                   r"training loss became (nan|inf)")
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_existing_results_are_not_replaced_without_force(finished_run, tmp_path):
    before = (finished_run / "metrics.json").read_text()
    one_error_line(run_cli("pgolf.cli", "run", write_config(tmp_path, small_config()), "--out", str(finished_run)),
                   r"already holds results")
    assert (finished_run / "metrics.json").read_text() == before


def test_data_fetch_fails_plainly_offline(tmp_path):
    result = run_cli("pgolf.cli", "data", "fetch", "--dir", str(tmp_path / "d"))
    if result.returncode == 0:
        pytest.skip("this machine has internet access")
    one_error_line(result, r"cannot reach huggingface.co|cannot download")
    assert not (tmp_path / "d").exists()
