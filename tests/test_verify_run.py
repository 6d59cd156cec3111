"""`search verify --run` (an export trained from scratch, its score compared with the trial's within the seed spread
the study measured) and `search confirm` of a script study (new seeds, the engine's t-test), on the stdlib fixture
script (tests/scripts/official_style.py: runs take well under a second) and, for an engine export, the micro study."""

import json
import os
import re

import pytest

from conftest import run_cli
from test_script_study import official_space, search, trials


def script_study(tmp_path, capsys, name: str, *flags) -> str:
    results = tmp_path / "results"
    space = official_space(tmp_path, dims="[dims.MATRIX_LR]\nchoices = [0.02, 0.04]\n[search]\npruner = \"none\"\n")
    code, out, err = search(capsys, "run", "--space", space, "--study", name, "--trials", "2", "--sampler-seed", "0", *flags,
                            "--results", str(results))
    assert code == 0, err
    return str(results)


def test_verify_run_reruns_a_script_export_within_the_seed_spread(tmp_path, capsys):
    results = script_study(tmp_path, capsys, "s", "--rerun-top", "1", "--rerun-seeds", "2")
    out_dir = tmp_path / "export"
    code, out, err = search(capsys, "export", "s", "--results", results, "--out", str(out_dir))
    assert code == 0, err
    record = json.loads((out_dir / "pgolf.json").read_text())
    spread = record["seed_spread"]
    study = trials(tmp_path / "results", "s")
    scores = [study[record["trial"]].values[0]] + [t.values[0] for t in study if t.user_attrs.get("rerun_of") == record["trial"]]
    assert spread["seeds"] == len(scores) == 3 and abs(spread["std"] - __import__("statistics").stdev(scores)) < 1e-12, (spread, scores)
    assert record["run"]["train_cap"] == {"MAX_WALLCLOCK_SECONDS": "60"}
    code, out, err = search(capsys, "verify", "--run", str(out_dir))
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    print(f"verify --run of a script export: {line}")
    assert line.startswith(f"ran {out_dir} from scratch (MAX_WALLCLOCK_SECONDS=60 python train_gpt.py): val_bpb "), line
    assert f"3 x seed std {spread['std']:.5f} (trial {record['trial']}'s configuration, {len(scores)} seeds)" in line
    assert "difference +0.00e+00" in line  # the fixture is deterministic for a seed: the trial's own score
    assert sorted(os.listdir(out_dir)) == sorted(["README.md", "pgolf.json", "submission.json", "train.log", "train_gpt.py",
                                                  "final_model.int8.ptz"])  # it ran elsewhere
    # A recorded score the run does not reproduce; a launch that crashes: one line each, non-zero exit.
    record["val_bpb_exact"] += 0.5
    (out_dir / "pgolf.json").write_text(json.dumps(record))
    code, out, err = search(capsys, "verify", "--run", str(out_dir))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "-0.50000 from the trial's" in err and "beyond the tolerance" in err, err
    record["launch"] = {"FAIL_AT_STEP": "3"}
    (out_dir / "pgolf.json").write_text(json.dumps(record))
    code, out, err = search(capsys, "verify", "--run", str(out_dir))
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "run from scratch, failed: the script exited with status 1 (its last line: RuntimeError: simulated crash at step 3)" in err, err


def test_verify_run_with_one_seed_uses_the_default_tolerance(tmp_path, capsys):
    results = script_study(tmp_path, capsys, "one")
    out_dir = tmp_path / "export"
    code, out, err = search(capsys, "export", "one", "--results", results, "--out", str(out_dir))
    assert code == 0, err
    code, out, err = search(capsys, "verify", "--run", str(out_dir))
    assert code == 0 and "within 0.00500: no seed spread measured (no configuration of the study ran on two seeds): the default 0.005" in out, out
    code, out, err = search(capsys, "verify", "--run", "--tolerance", "0.25", str(out_dir))
    assert code == 0 and "within 0.25000: --tolerance" in out, out
    code, out, err = search(capsys, "verify", "--run", "--data", str(tmp_path), str(out_dir))
    assert code != 0 and "a script export runs with its launch command's own variables" in err, err


def test_confirm_of_a_script_study_runs_new_seeds_and_tests_them(tmp_path, capsys):
    results = script_study(tmp_path, capsys, "c", "--rerun-top", "1", "--rerun-seeds", "1")
    code, out, err = search(capsys, "confirm", "c", "--trial", "1", "--seeds", "2", "--results", results)
    assert code == 0, err
    summary = out.strip().splitlines()[-1]
    print(f"confirm of a script study: {summary}")
    assert re.match(r"trial 1: bpb \d\.\d{5} \+- \d\.\d{5} over seeds \[1, 2\] \(max [\d,]+ bytes\); vs reference \d\.\d{5}: "
                    r"[-+]\d\.\d{5} nats, one-sided t = -?\d+\.\d\d, p = \S+ for an improvement of at least 0.005 nats -> "
                    r"(meets|does not meet) the record bar \(p < 0.01\)$", summary), summary
    assert "reference: the study's baseline trial 0" in out
    used = {t.user_attrs.get("seed") for t in trials(tmp_path / "results", "c")} | {1337}
    for seed in (1, 2):
        folder = tmp_path / "results" / "c" / "confirm" / f"0001-seed{seed}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["script_env"]["SEED"] == str(seed) and seed not in used
        assert metrics["script_values"] == trials(tmp_path / "results", "c")[1].params
    for flag, message in (("--same-steps", "--same-steps: a script study's confirm runs its script as the study did"),
                          ("--device=cpu", "--device: a script study's confirm")):
        code, out, err = search(capsys, "confirm", "c", "--trial", "1", flag, "--results", results)
        assert code != 0 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.timeout(900)  # the micro study first, when no other test of the session made it
def test_verify_run_trains_an_engine_export_from_scratch(micro_study, tmp_path):
    results, name = micro_study
    out = tmp_path / "submission"
    done = run_cli("search.cli", "export", name, "--trial", "0", "--force", "--out", str(out), "--results", str(results))
    assert done.returncode == 0, done.stderr
    # The micro study trains for 3 s under a wallclock cap: a run on a busy machine trains other steps, so the
    # comparison here is loose; the line says how far it landed.
    done = run_cli("search.cli", "verify", "--run", "--tolerance", "1", str(out))
    assert done.returncode == 0, done.stderr
    first, line = done.stdout.strip().splitlines()[0], done.stdout.strip().splitlines()[-1]
    print(f"verify --run of an engine export: {line}")
    assert first.startswith(f"verified {out}: ") and "difference 0.0e+00" in first  # the shipped model, re-scored exactly
    assert line.startswith(f"ran {out} from scratch (DATA_PATH=... TOKENIZER_PATH=... python train_gpt.py): val_bpb "), line
    assert "within 1.00000: --tolerance" in line and sorted(os.listdir(out)).count("final_model.pgolf") == 1
