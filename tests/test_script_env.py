"""pgolf's exported train_gpt.py as a records-style script: every config key read from an environment variable
(pgolf/script_env.py), listed by `search script-info`, and searched by a script study end to end."""

import ast
import json
import os
import subprocess
import sys

import optuna
import pytest

from conftest import SHARDS, TOKENIZER, small_config
from pgolf.assemble import assemble_script
from pgolf.config import config_from_dict, config_to_dict
from pgolf.script_env import OFFICIAL_NAMES, ScriptEnvError, all_env_names, env_read
from search.cli import main as search_main
from search.script.knobs import read_knobs
from search.script.logs import parse_log

# The variables the script reads besides its config: where its files are and how it runs.
RUNTIME_VARS = {"DATA_PATH", "TOKENIZER_PATH", "MODEL_PATH", "EVAL_ONLY", "PROBE_DIR", "DEVICE", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                "PRE_QUANT_SCORE"}


def test_names_are_unique_official_where_the_official_script_has_one_and_clear_of_the_runtime_variables():
    names = all_env_names()
    assert len(set(names.values())) == len(names), [n for n in names.values() if list(names.values()).count(n) > 1]
    assert not set(names.values()) & RUNTIME_VARS
    assert set(OFFICIAL_NAMES) <= set(names)  # no stale official entry for a key pgolf no longer has
    assert names["train.matrix_lr"] == "MATRIX_LR" and names["train.val_every"] == "VAL_LOSS_EVERY"
    assert names["train.seq_len"] == "TRAIN_SEQ_LEN" and names["eval.seq_len"] == "EVAL_SEQ_LEN"
    assert names["model.xsa_last"] == "MODEL_XSA_LAST" and names["quant.bits"] == "QUANT_BITS"
    assert all(n.isupper() and n.isidentifier() for n in names.values())


def test_script_info_lists_every_key_with_its_value_and_type():
    config = small_config(quant=dict(bits={"*": 6, "tok_emb.weight": 8}), train=dict(seq_len_stages=[32], matrix_lr=0.03))
    data = config_to_dict(config)
    knobs = read_knobs(assemble_script(data)).knobs
    del data["quant"]["code"]  # how the code is counted is not carried: the script runs the same either way
    names = all_env_names()
    for section, values in data.items():
        for key, value in values.items():
            knob = knobs[names[f"{section}.{key}"]]
            assert len(knob.reads) == 1, knob.name  # read in one place: its default is this config's value
            expected = json.dumps(value) if isinstance(value, (list, dict)) else value
            assert knob.default_value() == expected and type(knob.default_value()) is type(expected), knob.name
    assert knobs["MATRIX_LR"].type == "float" and knobs["NUM_LAYERS"].type == "int" and knobs["TIE_EMBEDDINGS"].type == "bool"
    assert knobs["QUANT_BITS"].default == '\'{"*": 6, "tok_emb.weight": 8}\'' and knobs["QUANT_COMPRESSOR"].default == '"zstd"'
    assert set(knobs) - set(names.values()) <= RUNTIME_VARS


def config_read_from(script: str) -> dict:
    """The script's CONFIG as it evaluates in this process's environment (its assignment alone, nothing else run)."""
    node = next(n for n in ast.parse(script).body if isinstance(n, ast.AnnAssign) and n.target.id == "CONFIG")
    return eval(compile(ast.Expression(node.value), "<CONFIG>", "eval"), {"os": os, "json": json})


def test_the_variables_set_the_config_and_unset_it_is_the_assembled_one(monkeypatch):
    data = config_to_dict(small_config(quant=dict(bits={"*": 6})))
    script = assemble_script(data)
    del data["quant"]["code"]  # how the code is counted is not carried: the script runs the same either way
    assert config_read_from(script) == data  # types included: 2.0 stays a float, True a bool
    for name, text in {"MATRIX_LR": "0.03", "NUM_LAYERS": "3", "TIE_EMBEDDINGS": "0", "QUANT_BITS": '{"*": 5}',
                       "QUANT_COMPRESSOR": "lzma", "QUANT_LEVEL": "9", "TRAIN_SEQ_LEN_STAGES": "[32]", "SEED": "7", "ITERATIONS": "9",
                       "MAX_WALLCLOCK_SECONDS": "12.5"}.items():
        monkeypatch.setenv(name, text)
    config = config_from_dict(config_read_from(script))
    assert (config.train.matrix_lr, config.model.num_layers, config.model.tie_embeddings) == (0.03, 3, False)
    assert config.quant.bits == {"*": 5} and config.quant.compressor == "lzma" and config.train.seq_len_stages == [32]
    assert (config.train.seed, config.train.iterations, config.train.max_wallclock_seconds) == (7, 9, 12.5)
    with pytest.raises(ScriptEnvError, match=r"config key model.no_such_key is not a key of pgolf's config"):
        env_read("model", "no_such_key", 1)


PGOLF_LOG = """\
step 1/200 train_loss 6.9324 train_time 0.6s step_avg 600.0ms
trained steps:180 train_time:59.1s stopped_by:wallclock
pre_quant val_loss:4.10000000 val_bpb:2.40000000
calibration and quantization: 0.8s (counted as training) train_time:59.9s
model_bytes:2500000 by_group:{'embedding': 500000, 'attention': 700000, 'mlp': 1300000}
final_roundtrip val_loss:4.07000000 val_bpb:2.38903673 eval_time:12.5s
final_roundtrip_exact val_loss:4.070000001 val_bpb:2.389036728193105
code_bytes:170074 total_bytes:2670074
"""


def test_pgolf_own_log_lines_parse_as_a_script_log():
    s = parse_log(PGOLF_LOG)
    assert (s.final.tag, s.score(), s.eval_seconds) == ("final_roundtrip_exact", 2.389036728193105, 12.5)
    assert s.train_seconds == 59.9 and s.stopped_early and not s.progress  # calibration counts as training
    assert s.steps == 180
    assert parse_log(PGOLF_LOG.replace("wallclock", "iterations")).stopped_early is False


def test_a_setting_that_needs_a_module_the_script_left_out_is_one_line(tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text(assemble_script(config_to_dict(small_config())))  # TTT off, zstd: neither optional module
    for name, value, module in (("EVAL_TTT", "lora", "ttt"), ("QUANT_COMPRESSOR", "rans", "entropy_codec")):
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=dict(os.environ, **{name: value}),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [
            f"error: {name}={value} needs pgolf/{module}.py, which this script leaves out (export one from a config that uses it)"], done.stderr


def test_a_model_file_that_needs_a_module_the_script_left_out_is_one_line(tmp_path):
    """EVAL_ONLY with another config's model file: rans-coded and reordered needs two modules this zstd script leaves
    out, and a corrupt zstd frame still gets its own line (artifact.py's `except` names rans's error class)."""
    from pgolf.model import GPT
    from pgolf.submission import pack_stored, quantize_model

    script = tmp_path / "train_gpt.py"
    script.write_text(assemble_script(config_to_dict(small_config())))
    other = small_config(quant=dict(compressor="rans", row_order="similar"))
    files = {"rans.pgolf": pack_stored(quantize_model(GPT(other.model), other), other)[0]}
    plain = pack_stored(quantize_model(GPT(other.model), small_config()), small_config())[0]
    files["corrupt.pgolf"] = plain[:-40] + bytes(b ^ 0x5A for b in plain[-40:])
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    expected = {"rans.pgolf": "error: this model file or setting needs pgolf/entropy_codec.py (quant.compressor == 'rans'), "
                              "which this script leaves out (export one from a config that uses it)",
                "corrupt.pgolf": "corrupt compressed frame"}
    for name, line in expected.items():
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, EVAL_ONLY="1", MODEL_PATH=name, DATA_PATH=SHARDS, TOKENIZER_PATH=TOKENIZER))
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and line in done.stderr, (name, done.stderr)


def search(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = search_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cut_down_data(folder) -> str:
    """The real shards cut short (the first documents of each), so each trial's two full scorings take a moment."""
    from pgolf.shards import read_shard, shard_files, write_shard

    folder.mkdir()
    for split, tokens in (("train", 100_000), ("val", 16_384)):
        write_shard(str(folder / f"fineweb_{split}_000000.bin"), read_shard(shard_files(os.path.join(SHARDS, f"fineweb_{split}_*.bin"))[0])[:tokens])
    return str(folder)


@pytest.mark.slow  # ~45 s: the export as a script study end to end
def test_pgolf_export_as_a_script_study_run_status_export_verify(tmp_path, capsys):
    """A micro model's exported script, searched over two of its variables as any records script is; the best
    trial's exported copy, run with no variable set, trains the trial's model and prints the trial's score."""
    config = small_config(model=dict(num_layers=1, model_dim=32), train=dict(iterations=4), quant=dict(level=3))
    data = cut_down_data(tmp_path / "data")
    script = tmp_path / "pgolf_export" / "train_gpt.py"
    script.parent.mkdir()
    script.write_text(assemble_script(config_to_dict(config)))
    space = tmp_path / "space.toml"
    space.write_text(f'name = "pgolf-export"\ntrials = 2\n[script]\npath = "{script}"\nartifact = "final_model.pgolf"\n'
                     f'[script.env]\nDATA_PATH = "{data}"\nTOKENIZER_PATH = "{TOKENIZER}"\n'
                     '[dims.MATRIX_LR]\nchoices = [0.02, 0.04]\n[dims.NUM_LAYERS]\nlow = 1\nhigh = 2\n'
                     '[caps]\nartifact_bytes = 16000000\ntrain_seconds = 60\neval_seconds = 60\n[search]\npruner = "none"\n')
    results = tmp_path / "results"
    code, out, err = search(capsys, "run", "--space", str(space), "--study", "e", "--sampler-seed", "0", "--results", str(results))
    assert code == 0, err
    settings = json.loads((results / "e" / "study.json").read_text())
    trials = optuna.load_study(study_name="e", storage=settings["storage"]).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2, [t.user_attrs.get("reason") for t in trials]
    assert trials[0].params == {"MATRIX_LR": 0.04, "NUM_LAYERS": 1}  # the export's own defaults
    metrics = json.loads((results / "e" / "trials" / "0000" / "metrics.json").read_text())
    # pgolf's own log lines: the exact final score, its eval time, the training time of its end-of-training line.
    assert metrics["final_line"].startswith("final_roundtrip_exact") and metrics["steps"] == 4
    assert 0 < metrics["train_seconds"] < 60 and 0 < metrics["eval_seconds"] < 60 and metrics["stopped_by"] == "iterations"
    assert metrics["code_bytes"] == script.stat().st_size and metrics["model_bytes"] == (results / "e" / "trials" / "0000" / "final_model.pgolf").stat().st_size
    record = json.loads((results / "e" / "trials" / "0000" / "final_model.pgolf.result.json").read_text())
    assert record["val_bpb"] == metrics["val_bpb_post"] and record["steps"] == 4  # the script's own record agrees
    code, out, err = search(capsys, "status", "e", "--results", str(results))
    assert code == 0 and out.count(" complete ") == 2 and "baseline" in out and "best feasible: trial " in out, out

    out_dir = tmp_path / "export"
    code, out, err = search(capsys, "export", "e", "--results", str(results), "--out", str(out_dir))
    assert code == 0, err
    exported = json.loads((out_dir / "pgolf.json").read_text())
    best = next(t for t in trials if t.number == exported["trial"])
    assert exported["defaults"]["NUM_LAYERS"] == str(best.params["NUM_LAYERS"]) and exported["launch"] == {
        "DATA_PATH": data, "TOKENIZER_PATH": TOKENIZER}  # no literal default: they go into the launch command
    code, out, err = search(capsys, "verify", str(out_dir))
    assert code == 0 and "equal trial" in out, err
    copy = (out_dir / "train_gpt.py").read_text()
    assert f'"num_layers": int(os.environ.get("NUM_LAYERS", {best.params["NUM_LAYERS"]})),' in copy
    # The copy, run with only the launch variables (and the study's training cap) set, writes the trial's model file.
    env = {k: v for k, v in os.environ.items() if k not in {"MATRIX_LR", "NUM_LAYERS", "SEED"}}
    env.update(exported["launch"], MAX_WALLCLOCK_SECONDS=metrics["script_env"]["MAX_WALLCLOCK_SECONDS"],
               MODEL_PATH=str(tmp_path / "again.pgolf"))
    done = subprocess.run([sys.executable, "train_gpt.py"], cwd=out_dir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    final = [line for line in done.stdout.splitlines() if line.startswith("final_roundtrip_exact")][-1]
    assert f"val_bpb:{best.values[0]!r}" in final, (final, best.values)
    assert (tmp_path / "again.pgolf").read_bytes() == (out_dir / "final_model.pgolf").read_bytes()
