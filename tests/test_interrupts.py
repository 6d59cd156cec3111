"""Ctrl-C (SIGINT) and SIGTERM: `search run` stops in order and `search resume` loses nothing; `pgolf run`
leaves nothing half-written. Real processes on the real data, the micro space's seconds-long trials."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from conftest import DATA, MICRO_SPACE, run_cli, small_config
from pgolf.configfiles import config_to_toml
from test_search import finished, load


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry))
        except (OSError, ValueError):
            pass
    return kids


def wait_for(condition, proc, what: str, seconds: float = 300):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"{what} never happened: {proc.communicate()[1][-2000:]}")


def interrupt(argv: list[str], trials, number: int, signum: int) -> tuple[str, str]:
    """Start `search ARGV`, send `signum` once trial `number` is training; (stdout, stderr) after checking that
    it exited with 128 + signum and left no trial process behind."""
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: trials.is_dir() and any(p.name.startswith(f".{number:04d}.partial") for p in trials.iterdir()),
             proc, f"trial {number} training")
    time.sleep(1.5)
    trial_processes = children(proc.pid)
    assert trial_processes
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # as a terminal's Ctrl-C: the whole foreground process group
    else:
        os.kill(proc.pid, signum)  # as `kill PID` or a scheduler
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert not [pid for pid in trial_processes if os.path.exists(f"/proc/{pid}")]  # stopped and reaped
    return out, err


def test_sigint_in_run_and_sigterm_in_resume_stop_in_order_and_lose_nothing(tmp_path):
    trials = tmp_path / "i" / "trials"
    counts = []

    def check(out, err, stopped: int, signum: int, states: list) -> str:
        name = signal.Signals(signum).name
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"search: interrupted by {name}: 1 finished trial(s) kept, 1 stopped and queued to run again"), err
        assert f"trial {stopped}: stopped by {name}; marked failed and queued to run again" in out
        study = load(tmp_path, "i")
        assert [t.state for t in study.trials] == states
        assert study.trials[stopped].user_attrs["reason"] == f"stopped by {name}; queued to run again as a new trial"
        assert [t.number for t in study.trials if t.user_attrs.get("retry_of") == stopped] == [len(states) - 1]
        assert sorted(p.name for p in trials.iterdir()) == ["0000"]  # nothing half-written for the stopped trials
        counts.append(f"after {name}: " + ", ".join(t.state.name for t in study.trials))
        resume = re.search(r"`(search resume [^`]+)`", last).group(1)
        assert resume == f"search resume i --results {tmp_path}"
        return resume

    # Ctrl-C while `search run` trains trial 1 (trial 0 is recorded; the sampler seed makes trial 1 one that
    # the byte predictor lets through).
    out, err = interrupt(["run", "--space", MICRO_SPACE, "--study", "i", "--trials", "2", "--sampler-seed", "0",
                          "--results", str(tmp_path)], trials, 1, signal.SIGINT)
    C, F, W = TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING
    resume = check(out, err, 1, signal.SIGINT, [C, F, W])
    kept = {t.number: t.values for t in load(tmp_path, "i").trials if t.state == C}

    # SIGTERM while the resume, run exactly as printed, trains trial 1's retry (trial 2).
    out, err = interrupt(shlex.split(resume)[1:], trials, 2, signal.SIGTERM)
    resume = check(out, err, 2, signal.SIGTERM, [C, F, F, W])

    done = run_cli("search.cli", *shlex.split(resume)[1:])
    assert done.returncode == 0, done.stderr + done.stdout
    after = load(tmp_path, "i")
    counts.append("after the last resume: " + ", ".join(t.state.name for t in after.trials))
    assert {t.number: t.values for t in after.trials if t.number in kept} == kept
    assert [t.user_attrs.get("retry_of") for t in after.trials] == [None, None, 1, 2]  # each stopped trial re-run once
    assert after.trials[3].params == after.trials[1].params and after.trials[3] in finished(after)
    assert len(finished(after)) == 2 and not [t for t in after.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    print("; ".join(counts))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_pgolf_run_stopped_by_a_signal_leaves_nothing(tmp_path, signum):
    config = tmp_path / "long.toml"
    config.write_text(config_to_toml(small_config(train=dict(iterations=1_000_000, max_wallclock_seconds=300.0))))
    proc = subprocess.Popen([sys.executable, "-m", "pgolf.cli", "run", str(config), "--data", DATA, "--out", str(tmp_path / "out"),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any((p / "train.log").exists() for p in tmp_path.glob(".out.partial-*")), proc, "training")
    time.sleep(1.0)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines() == [f"pgolf: interrupted by {signal.Signals(signum).name}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.toml"]  # no OUT, no staging folder
