"""search/script/run.py: a script run as it is, streamed, parsed, pruned or stopped, each failure one line."""

import os
import sys
import time

import pytest

from search.script import ScriptError
from search.script.run import run_script, script_command

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
OFFICIAL = os.path.join(SCRIPTS, "official_style.py")


def run(tmp_path, env=None, **options):
    options.setdefault("artifact_glob", "final_model*.ptz")
    return run_script(script_command(OFFICIAL), str(tmp_path), env or {}, str(tmp_path / "train.log"), **options)


def test_completed_run_streams_its_log_and_measures_its_artifact(tmp_path):
    result = run(tmp_path, {"ITERATIONS": "20"})
    assert (result.outcome, result.reason, result.returncode) == ("completed", "", 0)
    assert result.artifact == str(tmp_path / "final_model.int8.ptz") and result.artifact_bytes == os.path.getsize(result.artifact)
    assert result.summary.final.tag == "final_int8_zlib_roundtrip_exact" and [p.step for p in result.summary.progress] == [10, 20]
    assert (tmp_path / "train.log").read_text().splitlines()[-1] == result.tail[-1] == result.summary.final.text


@pytest.mark.parametrize("env, reason", [
    ({"FAIL_AT_STEP": "3"}, "the script exited with status 1"),
    ({"NO_FINAL": "1"}, "the script printed no final score (no val_bpb line after training)"),
    ({"FINAL_SCORE": "nan"}, "the script's final score is nan (log line 49: final_int8_zlib_roundtrip_exact val_loss:"),
    ({"NO_ARTIFACT": "1"}, "the script wrote no artifact matching final_model*.ptz"),
])
def test_each_failure_is_one_line_with_the_log_tail(tmp_path, env, reason):
    result = run(tmp_path, env)
    assert result.outcome == "failed" and result.reason.startswith(reason)
    if "FAIL_AT_STEP" in env:
        assert result.tail[-1] == "RuntimeError: simulated crash at step 3"


def test_pruned_on_a_report_and_stopped_past_the_time_limit(tmp_path):
    started = time.monotonic()
    result = run(tmp_path, {"ITERATIONS": "1000", "STEP_SLEEP": "0.05"}, on_report=lambda report: report.step >= 20)
    assert (result.outcome, result.reason) == ("pruned", "pruned at step 20")
    assert time.monotonic() - started < 20 and result.returncode == -15  # SIGTERM ended it, long before 1000 steps
    late = run(tmp_path, {"ITERATIONS": "1000", "STEP_SLEEP": "0.05"}, time_limit=1.0)
    assert (late.outcome, late.reason) == ("over_time", "the script ran past its time limit of 1 s and was stopped")
    assert late.wall_seconds < 15 and late.summary.progress


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ScriptError, match="not a valid regular expression"):
        run(tmp_path, final_tag="(")
    assert not (tmp_path / "train.log").exists()
    with pytest.raises(ScriptError, match=r"^cannot start /no/such/python: No such file"):
        run_script(script_command(OFFICIAL, interpreter="/no/such/python"), str(tmp_path), {}, str(tmp_path / "t.log"))
    with pytest.raises(ScriptError, match="ranks must be at least 1"):
        script_command(OFFICIAL, ranks=0)


def test_torchrun_command(tmp_path):
    command = script_command(OFFICIAL, ranks=2)
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", OFFICIAL]
    result = run_script(command, str(tmp_path), {"ITERATIONS": "10"}, str(tmp_path / "train.log"), artifact_glob="*.ptz")
    assert result.outcome == "completed", result.tail
