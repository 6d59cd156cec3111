"""`search confirm`: retrain a trial's final configuration with new seeds and test it as the challenge
does: a record must beat the reference by at least 0.005 nats with p < 0.01 (one-sided t-test).

Each seed is a full `pgolf run` of the trial's config (its allocation and eval settings fixed) in a
process of its own, or for a script study its script run as the trial ran it with the new seed
(search/script/confirm.py), under results/<study>/confirm/<trial>-seed<k>/; seeds are ones the study never used.
"""

import math
import os
import statistics
import subprocess
import sys

from pgolf.configfiles import config_to_toml
from pgolf.config import config_from_dict
from pgolf.metrics import RunMetrics
from pgolf.run import read_metrics
from search.budget.selection import fresh_seeds, seeds_used
from search.study import StudyError, trial_data
from search.submit.export import find_trial

RECORD_MARGIN_NATS = 0.005
RECORD_P_VALUE = 0.01
# A run whose step count differs from the trial's by more than this fraction did not train the same model:
# under a wallclock cap a busy machine trains fewer steps (seen: 29 and 85 steps against a trial's 124).
STEP_TOLERANCE = 0.10


def step_comparison(original_steps: int, original_seconds: float, runs: list[RunMetrics]) -> list[dict]:
    """Each run's steps and ms/step beside the original's; `differs` when the steps are off by more than
    STEP_TOLERANCE."""
    rows = []
    for m in runs:
        ratio = m.steps / max(original_steps, 1)
        rows.append({"steps": m.steps, "step_ms": 1000 * m.train_seconds / max(m.steps, 1), "original_steps": original_steps,
                     "original_step_ms": 1000 * original_seconds / max(original_steps, 1), "ratio": ratio,
                     "differs": abs(ratio - 1.0) > STEP_TOLERANCE})
    return rows


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function (Lentz's method).
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / (c if abs(c) > tiny else tiny)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / (c if abs(c) > tiny else tiny)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1.0 - x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, dof: int) -> float:
    tail = 0.5 * regularized_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return tail if t < 0 else 1.0 - tail


def one_sided_test(losses: list[float], reference_nats: float, margin: float = RECORD_MARGIN_NATS) -> dict:
    """H1: mean loss < reference - margin. Returns the t statistic and p-value."""
    n = len(losses)
    mean = statistics.fmean(losses)
    std = statistics.stdev(losses) if n > 1 else float("nan")
    if n < 2 or std == 0:
        return {"mean": mean, "std": std, "t": float("nan"), "p": float("nan")}
    t = (mean - (reference_nats - margin)) / (std / math.sqrt(n))
    return {"mean": mean, "std": std, "t": t, "p": student_t_cdf(t, n - 1)}


class EngineSeeds:
    """Each seed a full `pgolf run` of an engine trial's config (its allocation and eval settings fixed), in a process
    of its own; under torchrun with `ranks` > 1."""

    def __init__(self, directory: str, trial, recorded: RunMetrics, same_steps: bool, ranks: int, device: str | None):
        self.directory, self.trial, self.ranks, self.device = directory, trial, ranks, device
        self.config = config_from_dict(recorded.config)
        self.seed = self.config.train.seed  # the trial's own
        if same_steps:
            if not recorded.steps:
                raise StudyError(f"trial {trial.number} recorded no step count: it cannot be re-run at the same steps")
            self.config.train.iterations, self.config.train.max_wallclock_seconds = recorded.steps, 0.0

    def train(self, seed: int, out: str) -> None:
        config = self.config
        config.train.seed = seed
        config_path = out + ".toml"
        os.makedirs(os.path.dirname(config_path), exist_ok=True)
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(config_to_toml(config))
        data = trial_data(self.directory, self.trial.number)
        launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.ranks}"] if self.ranks > 1 else [])
        command = launcher + ["-m", "pgolf.cli", "run", config_path, "--data", os.path.dirname(data["train_pattern"]),
                              "--tokenizer", data["tokenizer"], "--out", out, "--force"] + (["--device", self.device] if self.device else [])
        code, stderr = run_child(command)
        if code != 0:
            raise StudyError(f"seed {seed} failed: {(stderr.strip() or 'no output').splitlines()[-1]}")


def confirm(name: str, results: str, number: int | None, seeds: int, reference_bpb: float | None, device: str | None = None,
            log=print, same_steps: bool = False, ranks: int | None = None) -> dict:
    """same_steps: train exactly the trial's step count, with no wallclock cap (a fixed-compute re-run: how
    busy the machine is no longer changes what is trained; its training time is then not checked).
    ranks: each run under torchrun with this many ranks on this machine (the challenge's 8 GPUs: ranks=8), each
    rank a share of every step's batch, as the exported script runs (default 1; a script study: its script's ranks).
    A script study's trial runs its script with its study's environment and a new seed (search/script/confirm.py);
    either kind trains with seeds the study never used."""
    if ranks is not None and ranks < 1:
        raise StudyError(f"--ranks must be at least 1, got {ranks}")
    directory, settings, study, trial = find_trial(name, results, number)
    if trial.user_attrs.get("stage") != "complete":
        raise StudyError(f"trial {trial.number} has no final configuration to confirm ({trial.user_attrs.get('stage')})")
    recorded = RunMetrics.from_dict(trial.user_attrs)  # a study of an earlier commit recorded ms_per_step as step_ms
    if "script" in settings.space:
        from search.script.confirm import ScriptSeeds

        runner = ScriptSeeds(directory, settings, trial, same_steps, ranks, device)
    else:
        runner = EngineSeeds(directory, trial, recorded, same_steps, ranks or 1, device)
    original_steps = recorded.steps or 0
    # The trial's pure training time (the recorded train_seconds includes calibration and quantization after it).
    original_seconds = (recorded.ms_per_step or 0.0) * original_steps / 1000 or recorded.train_seconds or 0.0
    if reference_bpb is None:
        baseline = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline") and t.user_attrs.get("stage") == "complete"), None)
        if baseline is None:
            raise StudyError("no --reference given and the study has no scored baseline trial to compare against")
        reference_bpb = RunMetrics.from_dict(baseline.user_attrs).val_bpb_post
        log(f"reference: the study's baseline trial {baseline.number}, bpb {reference_bpb:.6f}")
    seed_list = fresh_seeds(study, seeds, also_avoid={runner.seed})  # the significance test needs unseen seeds
    log(f"seeds {', '.join(map(str, seed_list))}: none of them was used by the study's {len(seeds_used(study))} seed(s)")
    runs = []
    for seed in seed_list:
        out = os.path.join(directory, "confirm", f"{trial.number:04d}-seed{seed}" + ("-steps" if same_steps else "")
                           + (f"-ranks{runner.ranks}" if runner.ranks > 1 else ""))
        if not os.path.exists(os.path.join(out, "metrics.json")):
            log(f"seed {seed}: training ({out})")
            runner.train(seed, out)
        metrics = RunMetrics.from_dict(read_metrics(out))
        runs.append(metrics)
        log(f"seed {seed}: val_bpb {metrics.val_bpb_post:.6f} val_loss {metrics.val_loss_post:.6f} nats, "
            f"{metrics.artifact_bytes:,} bytes, {metrics.steps} steps at {1000 * metrics.train_seconds / max(metrics.steps, 1):.0f} ms/step")
    if any(m.val_loss_post is None for m in runs):
        raise StudyError("a run's final line gives no val_loss: the record test compares losses in nats")
    # bpb = nats / ln 2 * tokens/bytes, and tokens/bytes is a property of the validation text (a script's log gives
    # both scores of its final line instead: their ratio).
    nats_per_bpb = (math.log(2.0) * runs[0].val_bytes / runs[0].val_tokens if runs[0].val_tokens
                    else runs[0].val_loss_post / runs[0].val_bpb_post)
    reference_nats = reference_bpb * nats_per_bpb
    test = one_sided_test([m.val_loss_post for m in runs], reference_nats)
    bpbs = [m.val_bpb_post for m in runs]
    summary = {"trial": trial.number, "seeds": seed_list, "study_seeds": sorted(seeds_used(study)), "val_bpb": bpbs, "mean_bpb": statistics.fmean(bpbs),
               "std_bpb": statistics.stdev(bpbs) if len(bpbs) > 1 else float("nan"), "reference_bpb": reference_bpb,
               "reference_nats": reference_nats, "mean_nats": test["mean"], "std_nats": test["std"],
               "improvement_nats": reference_nats - test["mean"], "t": test["t"], "p": test["p"],
               "record": bool(test["p"] < RECORD_P_VALUE) if not math.isnan(test["p"]) else False,
               "max_bytes": max(m.artifact_bytes for m in runs),
               "steps": step_comparison(original_steps, original_seconds, runs) if original_steps else []}
    if recorded.step_budget and not same_steps:
        summary["budget"] = budget_check(recorded.step_budget, runs)
    return summary


def budget_check(budget: dict, runs: list[RunMetrics]) -> dict:
    """A trial budgeted from a reference machine's seconds, re-run under that machine's wallclock cap (as it is shipped):
    the steps each run trained against the steps predicted for it. On the reference machine this checks the prediction."""
    predicted = budget["steps"]
    return {"machine": budget["machine"], "reference_seconds": budget["reference_seconds"], "predicted_steps": predicted,
            "predicted_step_ms": budget["reference_step_ms"], "trained_steps": [m.steps for m in runs],
            "step_ms": [1000 * (m.train_seconds - (m.post_training_seconds or 0.0)) / max(m.steps, 1) for m in runs],
            "errors": [predicted / max(m.steps, 1) - 1 for m in runs]}


def run_child(command: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of a child process. If this one is interrupted, the child is sent SIGTERM and waited
    for, so that it removes its own staging folder (subprocess.run would SIGKILL it and leave the folder)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            _, stderr = child.communicate()
        except BaseException:
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
            raise
    return child.returncode, stderr
