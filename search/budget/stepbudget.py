"""Training caps in a reference machine's seconds (caps.train_reference), as a step budget per configuration.

A trial cannot be capped at "600 s on 8xH100" by a wallclock on another machine. It trains a fixed number of steps
instead: the cap divided by its predicted step time on the reference machine. That prediction comes from
- a step-time model of this machine, seconds per step = a + b * FLOPs per step (6 x matrix weights per token plus
  attention, x tokens per step: flops_per_step), fitted by least squares on short timed runs ("probes") of the
  reference machine's shapes and of the space's smallest and largest configurations, at up to PROBE_TOKENS tokens
  per step (the model carries the timings over to any tokens per step), each probe's time its fastest timed step;
- the speed ratio: the reference machine's published step time of each of its shapes over this machine's modelled
  one, their geometric mean (the spread of the per-shape ratios is kept: it says how well one ratio fits all).
So reference seconds per step (shape) = ratio x (a + b x flops_per_step(shape)), and the budget is
floor(train seconds / that). The measurement (SpeedCalibration) is made once per study, before its first trial, in a
process of its own on the trials' device and thread count, and kept as CALIBRATION_FILE in the study's folder: trials
and `search resume` read it back. A trial's request carries its budget (budget_config); its metrics then hold the
budget, the ratio and its source figures, and its training time in reference seconds for the train constraint.
Validation reports stay in this machine's seconds (equal local time is equal reference time: one ratio for all).

`python -m search.budget.stepbudget REQUEST.json` is the probe process: it trains each config of the request (a list
of config dicts, on "device"), under torchrun too, and prints one JSON line of step times from rank 0.
"""

import dataclasses
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from pgolf.config import RunConfig, config_from_dict, config_to_dict

CALIBRATION_FILE = "step_budget.json"
PROBE_TOKENS = {"cpu": 8192, "cuda": 65536}  # tokens per probe step at most (the official script's pass per GPU)
PROBE_STEPS, PROBE_SKIP = 6, 2  # steps per probe; the first ones (allocator, caches, compile) are not timed


class BudgetError(ValueError):
    """A step budget that cannot be measured or applied; the message says why."""


# -- the step-time model ----------------------------------------------------------------------------------------------
def flops_per_token(config: RunConfig) -> float:
    """Training FLOPs per token: 6 x the matrix weights a token passes through (a shared segment's once per repeat; the
    output head always) plus forward and backward of attention's scores and mix (4 x seq_len x model_dim per layer)."""
    from objectives.bytes import tensor_infos

    m = config.model
    per_layer, other = {}, 0
    for info in tensor_infos(m):
        if info.role != "matrix":
            continue
        parts = info.name.split(".")
        if parts[0] == "blocks" and parts[1].isdigit():
            per_layer[int(parts[1])] = per_layer.get(int(parts[1]), 0) + info.numel
        else:
            other += info.numel
    looped = sum(per_layer.get(i, 0) for i in range(m.loop_start, m.loop_start + m.loop_len)) * max(m.loop_repeats - 1, 0)
    virtual = m.num_layers + m.loop_len * max(m.loop_repeats - 1, 0)
    head = m.vocab_size * m.model_dim
    return 6.0 * (sum(per_layer.values()) + looped + other + head) + 3.0 * 4.0 * config.train.seq_len * m.model_dim * virtual


def flops_per_step(config: RunConfig) -> float:
    return flops_per_token(config) * config.train.batch_tokens


@dataclass
class StepTimeModel:
    a: float  # seconds per step whatever its size (optimizer, launch and sync overheads)
    b: float  # seconds per FLOP

    def seconds(self, flops: float) -> float:
        return self.a + self.b * flops

    @classmethod
    def fit(cls, points: list[tuple[float, float]]) -> "StepTimeModel":
        """Least squares over (flops, seconds); a >= 0 (through the origin when the free fit puts a below 0, or with
        a single size)."""
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx > 0:
            b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
            a = my - b * mx
            if a >= 0 and b > 0:
                return cls(a, b)
        return cls(0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs))


def relative_errors(model: StepTimeModel, points: list[tuple[float, float]]) -> list[float]:
    return [(model.seconds(x) - y) / y for x, y in points]


# -- measuring --------------------------------------------------------------------------------------------------------
def probe_config(config: RunConfig, device_type: str, steps: int = PROBE_STEPS) -> RunConfig:
    """The config as a probe trains it: at most PROBE_TOKENS tokens per step (whole sequences), one pass per step,
    one context length, `steps` steps, no cap, no reports, no priming steps."""
    seq = config.train.seq_len
    tokens = max(seq, min(config.train.batch_tokens, PROBE_TOKENS.get(device_type, PROBE_TOKENS["cpu"])) // seq * seq)
    train = dataclasses.replace(config.train, batch_tokens=tokens, micro_batch_tokens=0, seq_len_stages=[], iterations=steps,
                                max_wallclock_seconds=0.0, val_every=0, val_every_seconds=0.0, log_every=0, warmup_steps=0)
    return dataclasses.replace(config, train=train)


class RandomTokens:
    """Batches of random token ids: a probe's time does not depend on what it reads, and a reference shape's vocab
    need not have data on this machine."""

    def __init__(self, vocab_size: int, rank: int, device):
        import torch

        self.vocab_size, self.device = vocab_size, device
        self.generator = torch.Generator().manual_seed(1234 + rank)

    def next_batch(self, tokens: int, seq_len: int, spans: int = 1):
        import torch

        ids = torch.randint(0, self.vocab_size, (tokens // seq_len, seq_len + 1), generator=self.generator)
        return ids[:, :-1].to(self.device), ids[:, 1:].to(self.device)


def train_config(config: RunConfig, runtime) -> dict:
    """Train `config` as it is, from fresh weights on random tokens; its steps and per-step seconds."""
    import torch

    from pgolf.model import GPT
    from pgolf.train import train

    torch.manual_seed(config.train.seed)
    model = GPT(config.model).to(runtime.device)
    loader = RandomTokens(config.model.vocab_size, runtime.rank, runtime.device)
    result = train(model, config.train, loader, runtime.device, log=lambda message: None, world_size=runtime.world_size)
    return {"steps": result.steps, "train_seconds": result.train_seconds, "step_seconds": result.step_seconds}


def probe_main(path: str) -> int:
    """The probe process: every config of the request, one after the other; rank 0 prints the results."""
    from pgolf.submission import process_group_scope, setup_runtime

    with open(path, encoding="utf-8") as f:
        request = json.load(f)
    if request.get("threads"):
        import torch

        torch.set_num_threads(int(request["threads"]))
    runtime = setup_runtime(request.get("device"))
    with process_group_scope(runtime):
        if request.get("warm_up") and request["configs"]:  # the process's first training pays one-time set-up: not timed
            first = config_from_dict(request["configs"][0])
            train_config(dataclasses.replace(first, train=dataclasses.replace(first.train, iterations=2, max_wallclock_seconds=0.0)), runtime)
        results = [train_config(config_from_dict(c), runtime) for c in request["configs"]]
    if runtime.rank == 0:
        print(json.dumps({"device": str(runtime.device), "world_size": runtime.world_size, "results": results}))
    return 0


def run_probes(configs: list[RunConfig], device: str | None, threads: int = 0, ranks: int = 1, timeout: float | None = None) -> dict:
    """Train each config in a process of its own making (torchrun with `ranks` ranks when > 1); its JSON result."""
    with tempfile.TemporaryDirectory(prefix="pgolf-probe-") as folder:
        path = os.path.join(folder, "request.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"device": device, "threads": threads, "warm_up": True, "configs": [config_to_dict(c) for c in configs]}, f)
        launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else [])
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        try:
            done = subprocess.run(launcher + ["-m", "search.budget.stepbudget", path], capture_output=True, text=True, env=env,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BudgetError(f"timing probes took longer than {timeout:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or "no output").splitlines()[-1]
        raise BudgetError(f"a timing probe failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_step_seconds(result: dict, skip: int = PROBE_SKIP) -> float:
    """The median of a run's steps after the first `skip`."""
    return statistics.median(result["step_seconds"][skip:] or result["step_seconds"])


def fastest_step_seconds(result: dict, skip: int = PROBE_SKIP) -> float:
    """A probe's step time: the fastest of its timed steps. On a shared machine other work only ever slows a step down,
    so the fastest is the machine's own speed (on a dedicated GPU it is within a percent of the median)."""
    return min(result["step_seconds"][skip:] or result["step_seconds"])


# -- the calibration --------------------------------------------------------------------------------------------------
@dataclass
class SpeedCalibration:
    """What a study measured once: this machine's step-time model and its speed ratio to the reference machine."""

    machine: str
    description: str
    figures: list  # the reference shapes: label, step_ms, source, flops_per_step, local_step_ms (model), ratio
    probes: list  # each timed config: label, flops_per_step, tokens_per_step, step_ms (fastest), median_step_ms, model_step_ms
    a: float
    b: float
    ratio: float  # reference seconds per modelled local second
    device: str = ""
    threads: int = 0
    host: str = ""
    measured_at: str = ""
    fit_error: dict = field(default_factory=dict)  # mean and max |relative error| of the model on the probes

    @property
    def model(self) -> StepTimeModel:
        return StepTimeModel(self.a, self.b)

    def local_step_seconds(self, config: RunConfig) -> float:
        return self.model.seconds(flops_per_step(config))

    def reference_step_seconds(self, config: RunConfig) -> float:
        return self.ratio * self.local_step_seconds(config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        spread = [f["ratio"] for f in self.figures]
        return (f"speed ratio to {self.machine}: {self.ratio:.4g} reference s per local s (from {len(self.figures)} published "
                f"figure(s), per-figure {min(spread):.4g}..{max(spread):.4g}); step-time model {1000 * self.a:.1f} ms + "
                f"{self.b * 1e12:.4g} ms per GFLOP on {self.device}, fit error mean {self.fit_error.get('mean', 0):.1%} "
                f"max {self.fit_error.get('max', 0):.1%} over {len(self.probes)} probes")


def calibrate(machine, extra: list[tuple[str, RunConfig]], device: str | None, threads: int = 0, ranks: int = 1, log=print,
              steps: int = PROBE_STEPS) -> SpeedCalibration:
    """Time the machine's shapes and the `extra` (label, config) probes here, fit the model, take the ratio."""
    import torch

    device_type = (device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    shapes = [(s.label, s.run_config()) for s in machine.shapes]
    named = shapes + [(label, c) for label, c in extra if label not in {s for s, _ in shapes}]
    probes = [probe_config(c, device_type, steps) for _, c in named]
    log(f"step budget: timing {len(probes)} configuration(s) for {steps} steps each on this machine ({device_type}) against "
        f"{machine.name}'s published step times")
    measured = run_probes(probes, device, threads, ranks)
    points, records = [], []
    for (label, _), probe, result in zip(named, probes, measured["results"]):
        seconds = fastest_step_seconds(result)
        points.append((flops_per_step(probe), seconds))
        records.append({"label": label, "flops_per_step": flops_per_step(probe), "tokens_per_step": probe.train.batch_tokens,
                        "step_ms": 1000 * seconds, "median_step_ms": 1000 * median_step_seconds(result)})
    model = StepTimeModel.fit(points)
    errors = relative_errors(model, points)
    for record, error in zip(records, errors):
        record["model_step_ms"] = 1000 * model.seconds(record["flops_per_step"])
        record["model_error"] = error
    figures = []
    for shape, (_, config) in zip(machine.shapes, shapes):
        local = model.seconds(flops_per_step(config))
        figures.append({**shape.record(), "flops_per_step": flops_per_step(config), "tokens_per_step": config.train.batch_tokens,
                        "local_step_ms": 1000 * local, "ratio": shape.step_ms / 1000 / local})
    ratio = math.exp(statistics.fmean(math.log(f["ratio"]) for f in figures))
    calibration = SpeedCalibration(machine.name, machine.description, figures, records, model.a, model.b, ratio,
                                   device=measured["device"], threads=threads, host=socket.gethostname(),
                                   measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   fit_error={"mean": statistics.fmean(abs(e) for e in errors), "max": max(abs(e) for e in errors)})
    log(calibration.summary())
    return calibration


# -- a study's calibration and each trial's budget ------------------------------------------------------------------
def space_probes(space) -> list[tuple[str, RunConfig]]:
    """The space's smallest and largest configurations (every dimension at its low, then its high bound): the model then
    spans the shapes its trials can take. A bound the space cannot build is left out, and a repeated one."""
    from space.sample import ParamSource, suggest_config
    from space.spec import SpaceError

    probes = []
    for label, end in (("space smallest", 0), ("space largest", 1)):
        try:
            config = suggest_config(space, ParamSource({d.key: d.values_bound()[end] for d in space.dims}))[0]
        except SpaceError:
            continue
        if all(config != other for _, other in probes):
            probes.append((label, config))
    return probes


def measure_for_space(space, device: str | None, threads: int = 0, log=print) -> SpeedCalibration:
    from search.budget.references import reference_machine

    machine = reference_machine(space.caps.train_reference, os.path.dirname(space.source) if space.source else "")
    return calibrate(machine, space_probes(space), device, threads, log=log)


def write_calibration(directory: str, calibration: SpeedCalibration) -> None:
    path = os.path.join(directory, CALIBRATION_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(calibration.to_dict(), f, indent=2)
    os.replace(path + ".tmp", path)


def read_calibration(directory: str) -> SpeedCalibration | None:
    """The study's calibration, None when it has none yet."""
    from pgolf.files import read_json

    path = os.path.join(directory, CALIBRATION_FILE)
    if not os.path.exists(path):
        return None
    data = read_json(path, "the study's step-budget calibration")
    try:
        return SpeedCalibration(**data)
    except TypeError as exc:
        raise BudgetError(f"{path} is damaged ({exc})") from None


def study_calibration(directory: str, space, device: str | None, threads: int = 0, log=print) -> SpeedCalibration | None:
    """The calibration a study's trials are budgeted with: the stored one, else measured now and stored (None for a
    space whose cap is in this machine's seconds)."""
    if not space.caps.train_reference:
        return None
    calibration = read_calibration(directory)
    if calibration is None:
        calibration = measure_for_space(space, device, threads, log)
        write_calibration(directory, calibration)
    else:
        log(f"step budget: the study's calibration of {calibration.measured_at} on {calibration.device} ({calibration.ratio:.4g} "
            f"{calibration.machine} s per local s)")
        if calibration.host != socket.gethostname():  # kept: the study's trials so far were budgeted with it
            log(f"warning: the calibration was measured on {calibration.host}, not here ({socket.gethostname()}): its step "
                f"budgets assume that machine's speed (start a new study to measure this one)")
    return calibration


def budget_config(config: RunConfig, calibration: SpeedCalibration, cap_seconds: float) -> tuple[RunConfig, dict]:
    """(the config a trial trains: a fixed step count, no wallclock cap; its budget record). The config's wallclock
    (sample.py sets it to the cap, or a space leaves less for post-training work) and its reserve_seconds are read in
    reference seconds."""
    seconds = config.train.max_wallclock_seconds if 0 < config.train.max_wallclock_seconds <= cap_seconds else cap_seconds
    seconds = max(seconds - config.train.reserve_seconds, 0.0)
    reference_step = calibration.reference_step_seconds(config)
    steps = max(1, min(config.train.iterations, int(seconds / reference_step)))
    record = {"machine": calibration.machine, "reference_seconds": seconds, "cap_seconds": cap_seconds, "steps": steps,
              "reference_step_ms": 1000 * reference_step, "local_step_ms": 1000 * calibration.local_step_seconds(config),
              "ratio": calibration.ratio, "flops_per_step": flops_per_step(config), "iterations": config.train.iterations,
              "figures": [{k: f[k] for k in ("label", "step_ms", "source")} for f in calibration.figures]}
    train = dataclasses.replace(config.train, iterations=steps, max_wallclock_seconds=0.0)
    return dataclasses.replace(config, train=train), record


def submission_config(config: RunConfig, budget: dict) -> RunConfig:
    """The config a submission ships from a budgeted trial: the reference machine's wallclock cap and the original
    iteration count back (the step budget was this machine's stand-in for them)."""
    seconds = budget["reference_seconds"] + config.train.reserve_seconds
    train = dataclasses.replace(config.train, iterations=budget["iterations"], max_wallclock_seconds=seconds)
    return dataclasses.replace(config, train=train)


def reference_train_seconds(budget: dict, steps: int, post_training_seconds: float) -> float:
    """A budgeted trial's training time in reference seconds: its steps at the predicted reference step time, and the
    work after training (calibration, quantization) carried over at the speed ratio."""
    return steps * budget["reference_step_ms"] / 1000 + post_training_seconds * budget["ratio"]


if __name__ == "__main__":
    sys.exit(probe_main(sys.argv[1]))
