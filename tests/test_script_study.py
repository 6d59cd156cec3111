"""Script studies end to end: a space with a [script] table, trials that run the fixture scripts (tests/scripts,
stdlib only: each run takes well under a second), status, export and verify; bad input and broken runs, each
one line with the right trial state."""

import json
import os
import subprocess
import sys

import optuna
import pytest

from search.cli import main as search_main

HERE = os.path.dirname(os.path.abspath(__file__))
OFFICIAL_SPACE = os.path.join(HERE, "spaces", "script_official.toml")
OFFICIAL = os.path.join(HERE, "scripts", "official_style.py")
RECORDS = os.path.join(HERE, "scripts", "records_style.py")


def search(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = search_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write_space(folder, text: str, name: str = "space.toml") -> str:
    path = os.path.join(str(folder), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def official_space(folder, env: str = "", dims: str = "[dims.MATRIX_LR]\nchoices = [0.02, 0.04]\n", script: str = "",
                   caps: str = "") -> str:
    return write_space(folder, f'trials = 1\n[script]\npath = "{OFFICIAL}"\nartifact = "final_model*.ptz"\n{script}\n'
                               f'[script.env]\nITERATIONS = 20\n{env}\n{dims}\n[caps]\ntrain_seconds = 60\neval_seconds = 60\n{caps}')


def trials(results, name):
    settings = json.loads((results / name / "study.json").read_text())
    return optuna.load_study(study_name=name, storage=settings["storage"]).get_trials()


def run_exported(folder, env: dict) -> str:
    """The exported script run as the README says, in a copy of its folder: its final score line."""
    done = subprocess.run([sys.executable, "train_gpt.py"], cwd=folder, env=dict(os.environ, **env), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if "val_bpb" in line][-1]


def test_script_study_run_status_export_verify(tmp_path, capsys):
    results = tmp_path / "results"
    code, out, err = search(capsys, "run", "--space", OFFICIAL_SPACE, "--study", "s", "--sampler-seed", "0", "--results", str(results))
    assert code == 0, err
    states = [(t.state.name, t.user_attrs.get("stage")) for t in trials(results, "s")]
    assert states.count(("COMPLETE", "complete")) >= 3 and ("PRUNED", "pruned") in states, states
    first = trials(results, "s")[0]
    assert first.user_attrs["baseline"] and first.params == {"MATRIX_LR": 0.04, "MODEL_DIM": 64}  # the script's own defaults
    folder = results / "s" / "trials" / "0000"
    metrics = json.loads((folder / "metrics.json").read_text())
    # Bytes measured by pgolf: the script as it is plus the artifact it wrote; the script's own total agrees here.
    assert metrics["code_bytes"] == os.path.getsize(OFFICIAL) and metrics["model_bytes"] == os.path.getsize(folder / "final_model.int8.ptz")
    assert metrics["artifact_bytes"] == metrics["code_bytes"] + metrics["model_bytes"] == metrics["script_reported_bytes"]
    assert metrics["val_bpb_post"] == first.values[0] and metrics["steps"] == 40 and metrics["seed"] == 1337
    assert metrics["final_line"].startswith("final_int8_zlib_roundtrip_exact")
    pruned = next(t for t in trials(results, "s") if t.state.name == "PRUNED")
    reports = [json.loads(line) for line in (results / "s" / "trials" / f"{pruned.number:04d}" / "reports.jsonl").read_text().splitlines()]
    assert [r[0] for r in reports] == list(range(1, len(reports) + 1)) and len(reports) < 8  # stopped before its 8 reports
    assert pruned.user_attrs["reason"].startswith(f"pruned at report {len(reports)} (val bpb")
    code, out, err = search(capsys, "status", "s", "--results", str(results))
    assert code == 0 and "pruned at report" in out and "baseline" in out and "the script says" not in out, out
    # Re-runs with new seeds: the seed goes into the script's seed variable.
    code, out, err = search(capsys, "resume", "s", "--rerun-top", "1", "--rerun-seeds", "1", "--results", str(results))
    assert code == 0, err
    rerun = trials(results, "s")[-1]
    rerun_metrics = json.loads((results / "s" / "trials" / f"{rerun.number:04d}" / "metrics.json").read_text())
    assert rerun.user_attrs["seed"] == rerun_metrics["seed"] == int(rerun_metrics["script_env"]["SEED"]) != 1337
    # A name clash with an existing study, of either kind: one line, nothing changed.
    code, out, err = search(capsys, "run", "--space", "demo", "--study", "s", "--results", str(results))
    assert code != 0 and "study 's' already exists" in err and len(err.strip().splitlines()) == 1, err

    out_dir = tmp_path / "export"
    code, out, err = search(capsys, "export", "s", "--results", str(results), "--out", str(out_dir))
    assert code == 0, err
    record = json.loads((out_dir / "pgolf.json").read_text())
    best = next(t for t in trials(results, "s") if t.number == record["trial"])
    assert record["kind"] == "script" and record["defaults"]["MATRIX_LR"] == repr(best.params["MATRIX_LR"])
    readme = (out_dir / "README.md").read_text()
    assert "| `VAL_LOSS_EVERY` | 10 | 5 |" in readme and "    python train_gpt.py" in readme
    selection = json.loads((out_dir / "submission.json").read_text())["selection"]
    assert selection["trials"] == len(trials(results, "s")) and "## Selection" in readme
    code, out, err = search(capsys, "verify", str(out_dir))
    assert code == 0 and out.startswith(f"verified {out_dir}: ") and "equal trial" in out, err
    # The copy, run with no variable set, trains the trial's model and prints the trial's score.
    final = run_exported(out_dir, {})
    assert final.startswith("final_int8_zlib_roundtrip_exact") and f"val_bpb:{best.values[0]:.8f}" in final
    script = out_dir / "train_gpt.py"
    script.write_text(script.read_text().replace('"VAL_LOSS_EVERY", 5', '"VAL_LOSS_EVERY", 6'))
    code, out, err = search(capsys, "verify", str(out_dir))
    assert code != 0 and "bytes" not in err and "the default of VAL_LOSS_EVERY is 6, not the trial's 5" in err, err


def write_split(folder, train: list, val: list) -> str:
    """A shard folder with one training and one validation shard (documents start with BOS, id 1)."""
    import numpy as np

    from pgolf.shards import write_shard

    os.makedirs(folder, exist_ok=True)
    write_shard(os.path.join(folder, "fineweb_train_000000.bin"), np.array(sum(train, []), dtype=np.uint16))
    write_shard(os.path.join(folder, "fineweb_val_000000.bin"), np.array(sum(val, []), dtype=np.uint16))
    return str(folder)


def test_compressed_code_and_a_named_final_line(tmp_path, capsys):
    val = [[1, 5, 6, 7], [1, 8, 9]]
    data = write_split(tmp_path / "data", [[1, 20, 21], [1, 22, 23, 24]], val)
    space = write_space(tmp_path, f'trials = 1\n[script]\npath = "{RECORDS}"\ncounted = ["records_helper.py"]\n'
                                  'artifact = "final_model.int6.ptz"\ncode = "compressed"\nfinal_tag = "quantized_ttt_phased"\n'
                                  f'[script.env]\nSEED = 7\nDATA_DIR = "{data}"\n[dims.EMA_DECAY]\nlow = 0.5\nhigh = 0.95\n'
                                  '[search]\npruner = "none"\n')
    results = tmp_path / "results"
    code, out, err = search(capsys, "run", "--space", space, "--study", "r", "--sampler-seed", "0", "--results", str(results))
    assert code == 0, err
    from pgolf.selfextract import build

    metrics = json.loads((results / "r" / "trials" / "0000" / "metrics.json").read_text())
    assert metrics["code_bytes"] == build(RECORDS, [os.path.join(HERE, "scripts", "records_helper.py")]).bytes_compressed
    assert metrics["final_line"].startswith("quantized_ttt_phased") and metrics["eval_seconds"] == 0.1
    code, out, err = search(capsys, "status", "r", "--results", str(results))
    assert f"the script says {metrics['script_reported_bytes']:,} bytes" in out, out  # its own figure, shown, not used
    out_dir = tmp_path / "export"
    code, out, err = search(capsys, "export", "r", "--results", str(results), "--out", str(out_dir))
    assert code == 0, err
    exported = out
    assert sorted(os.listdir(out_dir / "source")) == ["records_helper.py", "train_gpt.py"]
    assert (out_dir / "train_gpt.py").read_text().startswith("import lzma as L,base64 as B\n")
    code, out, err = search(capsys, "verify", str(out_dir))
    assert code == 0 and "compressed" in out, err
    best = json.loads((out_dir / "pgolf.json").read_text())
    assert list(best["data_provenance"]) == [data] and "no validation document occurs in training" in exported
    assert f"    DATA_DIR={data} SEED=7 python train_gpt.py" in (out_dir / "README.md").read_text()  # no literal defaults
    final = run_exported(out_dir, {"SEED": "7"})
    assert final.startswith("quantized_ttt_phased") and f"val_bpb:{best['val_bpb_exact']:.8f}" in final
    # A validation document planted in the training shards: export and verify refuse, naming it.
    write_split(data, [[1, 20, 21], val[1], [1, 22, 23, 24]], val)
    for command in (("verify", str(out_dir)), ("export", "r", "--results", str(results), "--out", str(out_dir), "--replace")):
        code, out, err = search(capsys, *command)
        assert code != 0 and "data provenance: " in err and "validation document 1" in err and "at token 3" in err, err


@pytest.mark.parametrize("edit, message", [
    (dict(dims="[dims.MATRIX_LRR]\nchoices = [0.02]\n"), "dimension MATRIX_LRR: {OFFICIAL} never reads this environment variable (did you mean MATRIX_LR?)"),
    (dict(dims="[dims.MODEL_DIM]\nchoices = [32, 1.5]\n"), "dims.MODEL_DIM 1.5 for MODEL_DIM: not an integer"),
    (dict(env='DATA_PATH = "./data"\n'), "fixed variable DATA_PATH: {OFFICIAL} never reads this environment variable"),
    (dict(env='ITERATIONS_X = 3\n'), "fixed variable ITERATIONS_X"),
    (dict(script='final_tag = "("\n'), "final-line tag '(' is not a valid regular expression"),
    (dict(script='wallclock_var = "MAX_SECONDS"\n'), "script.wallclock_var MAX_SECONDS: {OFFICIAL} never reads"),
])
def test_bad_spaces_are_refused_before_anything_runs(tmp_path, capsys, edit, message):
    space = official_space(tmp_path, **edit)
    results = tmp_path / "results"
    code, out, err = search(capsys, "run", "--space", space, "--study", "x", "--results", str(results))
    assert code != 0 and len(err.strip().splitlines()) == 1 and message.format(OFFICIAL=OFFICIAL) in err, err
    assert not (results / "x").exists()


def test_a_script_path_that_does_not_exist(tmp_path, capsys):
    space = write_space(tmp_path, '[script]\npath = "no_such.py"\n')
    code, out, err = search(capsys, "run", "--space", space, "--results", str(tmp_path / "results"))
    assert code != 0 and err.strip() == f"search: error: {space}: script.path: {tmp_path / 'no_such.py'} does not exist", err
    # A compressed form that would not run: a counted module the loader must bundle is not UTF-8 text.
    (tmp_path / "train.py").write_text(open(OFFICIAL).read())
    (tmp_path / "helper.py").write_bytes(b"x = '\xff'\n")
    space = write_space(tmp_path, '[script]\npath = "train.py"\ncode = "compressed"\ncounted = ["helper.py"]\n')
    code, out, err = search(capsys, "run", "--space", space, "--results", str(tmp_path / "results"))
    assert code != 0 and err.strip() == f'search: error: {space}: script.code = "compressed": {tmp_path / "helper.py"} is not UTF-8 text', err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("env, reason", [
    ("FAIL_AT_STEP = 3", "the script exited with status 1 (train.log's last line: RuntimeError: simulated crash at step 3)"),
    ("NO_FINAL = 1", "the script printed no final score (no val_bpb line after training)"),
    ('FINAL_SCORE = "nan"', "the script's final score is nan (log line"),
    ("NO_ARTIFACT = 1", "the script wrote no artifact matching final_model*.ptz"),
])
def test_a_broken_run_fails_its_trial_in_one_line(tmp_path, capsys, env, reason):
    results = tmp_path / "results"
    # --timeout 1: no trial starts after the first (a failed trial does not count as finished, so another would)
    code, out, err = search(capsys, "run", "--space", official_space(tmp_path, env=env), "--study", "b", "--timeout", "1",
                            "--results", str(results))
    assert code == 0, err
    [trial] = trials(results, "b")
    assert trial.state.name == "FAIL" and trial.user_attrs["stage"] == "failed"
    assert reason in trial.user_attrs["reason"] and "\n" not in trial.user_attrs["reason"], trial.user_attrs["reason"]
    code, out, err = search(capsys, "status", "b", "--results", str(results))
    assert f"   0 failed  " in out and f"exit code 1: {reason}"[:80] in out, out
    assert reason.split(" (")[0] in (results / "b" / "trials" / "0000" / "error.txt").read_text()


def test_an_artifact_over_the_cap_is_a_complete_infeasible_trial(tmp_path, capsys):
    results = tmp_path / "results"
    space = official_space(tmp_path, env="PAD_ARTIFACT_BYTES = 20000", caps="artifact_bytes = 10000\n")
    code, out, err = search(capsys, "run", "--space", space, "--study", "big", "--results", str(results))
    assert code == 0, err
    [trial] = trials(results, "big")
    assert trial.state.name == "COMPLETE" and trial.user_attrs["artifact_bytes"] > 20000 and trial.constraints["artifact_bytes"] > 0
    code, out, err = search(capsys, "status", "big", "--results", str(results))
    assert " no  baseline" in out and "no feasible trial yet" in out, out
    code, out, err = search(capsys, "export", "big", "--trial", "0", "--results", str(results), "--out", str(tmp_path / "e"))
    assert code != 0 and "trial 0 is infeasible (artifact_bytes over by" in err and not (tmp_path / "e").exists()
    code, out, err = search(capsys, "export", "big", "--trial", "0", "--force", "--results", str(results), "--out", str(tmp_path / "e"))
    assert code == 0 and json.loads((tmp_path / "e" / "pgolf.json").read_text())["forced"], err
    code, out, err = search(capsys, "verify", str(tmp_path / "e"))
    assert code != 0 and "over the 10,000-byte cap" in err, err


def test_reports_count_at_equal_training_time_when_the_space_gives_an_interval(tmp_path):
    from search.script.logs import Progress
    from search.script.trial import _pruner_callback

    reports = []
    on_report = _pruner_callback({"script": {"report_every_seconds": 1.0}, "pruner": None}, str(tmp_path), reports, [])
    for seconds, bpb in ((0.5, 3.0), (1.2, 2.9), (1.7, 2.8), (2.1, 2.7), (None, 2.6), (4.0, 2.5)):
        assert on_report(Progress(1, seconds, bpb)) is False
    # Before the first second nothing counts; in one bucket the first report does; bucket 3 was skipped.
    assert reports == [[1, 2.9], [2, 2.7], [4, 2.5]]
    assert (tmp_path / "reports.jsonl").read_text().splitlines() == ["[1, 2.9]", "[2, 2.7]", "[4, 2.5]"]
