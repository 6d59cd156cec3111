"""The figures of a run or trial (pgolf/metrics.py): one dataclass, and metrics.json of earlier commits still read."""

import json

from pgolf.config import config_to_dict
from pgolf.configfiles import resolve_config
from pgolf.metrics import EXPORT_NAMES, RunMetrics, read_metrics_file, recorded_names
from search.submit.export import export_trial
from test_hostile_files import STUDY, fake_study


def old_trial_metrics(code_bytes: int, model_bytes: int) -> dict:
    """A complete trial's metrics.json as search/trial.py wrote it at 6400afc (ms per step as `step_ms`)."""
    return {"train_seconds": 2.651425066999991, "steps": 28, "step_ms": 94.69375239285682, "train_tokens": 28672,
            "stopped_by": "wallclock", "params": 40066, "reports": [[1, 4.002275969746494], [2, 3.5379940971249844]],
            "allocation_seconds": 2.9453486060000387, "val_bpb_pre_subset": 3.4480860491341865, "subset_tokens": 2048,
            "post_training_seconds": 0.0, "val_bpb_post": 3.580082057589044, "val_loss_post": 5.99042769603673,
            "artifact_bytes": code_bytes + model_bytes, "model_bytes": model_bytes, "code_bytes": code_bytes,
            "bytes_by_group": {"embedding": model_bytes, "code": code_bytes}, "eval_seconds": 1.319711806999976,
            "quant_gap_bpb": 0.00021271464445415944, "allocation": "best uniform", "config": config_to_dict(resolve_config("tiny")),
            "feasible": True, "phases": {"setup": 0.54, "training": 2.65, "write": 0.099}, "trial_seconds": 7.510370491999993}


def test_a_trial_metrics_json_of_an_earlier_commit_reads_under_todays_names(tmp_path):
    old = old_trial_metrics(152_733, 26_920)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(old))
    m = read_metrics_file(str(path))
    assert m.ms_per_step == old["step_ms"] and m.val_bpb_post == old["val_bpb_post"] and m.reports == old["reports"]
    # Written back, it is the same record with the one renamed key.
    assert m.to_dict() == {("ms_per_step" if k == "step_ms" else k): v for k, v in old.items()}
    # Every name a reader asks for is a field (the coordinator's user attributes, export's figures).
    assert set(recorded_names("trained")) | set(recorded_names("scored")) | set(EXPORT_NAMES) <= set(RunMetrics().__dict__)


def test_a_trial_folder_written_by_an_earlier_commit_exports(tmp_path):
    model_file, script = b"model bytes of an earlier trial", "print('train_gpt.py of an earlier trial')\n"
    fake_study(tmp_path, model_file, script)
    trial = tmp_path / STUDY / "trials" / "0000"
    old = old_trial_metrics(len(script.encode()), len(model_file))
    (trial / "metrics.json").write_text(json.dumps(old))
    (trial / "train.log").write_text("trained\n")
    (trial / "request.json").write_text(json.dumps({"data": {"train_pattern": "t*.bin", "val_pattern": "v*.bin", "tokenizer": "x.model",
                                                             "vocab_size": 1024}}))
    submission = export_trial(STUDY, str(tmp_path), 0, str(tmp_path / "export"), legality=False)
    assert submission["val_bpb"] == old["val_bpb_post"] and submission["bytes_total"] == old["artifact_bytes"]
    readme = (tmp_path / "export" / "README.md").read_text()
    assert f"{old['steps']} steps" in readme and "on the first 2,048 validation tokens" in readme
