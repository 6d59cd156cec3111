"""The measurements of the GPU check, one part per process (bench/gpu_check.py runs each under its own time limit).

    shape baseline|frontier   training steps of that shape at 65,536 tokens per pass, eight passes per step (the
                   official script's 524,288-token step on one GPU): ms per step and per pass, peak memory, compile
                   seconds, the graphs Dynamo compiled after the warmup (a recompile is one more), and the attention
                   kernel (the SDPA operator, and on a GPU its kernels, read off a profile of one timed step). The
                   frontier shape validates once at its eval length (2,560) before its last two steps: a recompile
                   there shows in those steps' times and in the graph count.
    calibration    the frontier shape's post-training step at its heaviest allocation (GPTQ int6 with a rank-4
                   correction and AWQ on every matrix, an int7 embedding, 1,048,576 calibration tokens): seconds of
                   calibration and of GPTQ + packing, against the preset's 20 s reserve
    ttt            score-first LoRA TTT (rank 80, chunk 48: the frontier allocation's heaviest) on 16,384 validation
                   tokens at the frontier shape: seconds and peak memory
    official PATH  the official train_gpt.py (never shipped: the user's own copy) at its baseline on the same device,
                   eight 65,536-token passes per step: its median step, from its own log

Each part writes its figures to --out as it goes, so a part stopped by its time limit still reports what it had.
The weights are the fresh initialisation: none of these figures depends on what the weights have learned.
--smoke runs the same code at CPU sizes (the tiny and frontier_tiny configs at width 64, 1,024-token passes, two a
step): a check of this file where there is no GPU; its figures are CPU figures.

    python bench/gpu_parts.py PART [ARG] --data BUNDLE_DATA --out FILE [--device cuda] [--smoke] [--compile auto|on|off]
"""

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench.gpu_bundle import bundle_data_paths  # noqa: E402
from pgolf.config import RunConfig, config_from_dict, config_to_dict  # noqa: E402
from pgolf.configfiles import resolve_config  # noqa: E402
from pgolf.evaluate import synchronize  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Scale:
    pass_tokens: int
    passes: int  # per step
    warmup: int  # warmup steps (compile)
    steps: int  # timed steps
    calib_tokens: int
    ttt_tokens: int


SCALES = {"full": Scale(pass_tokens=65_536, passes=8, warmup=2, steps=10, calib_tokens=1_048_576, ttt_tokens=16_384),
          "smoke": Scale(pass_tokens=1_024, passes=2, warmup=1, steps=6, calib_tokens=16_384, ttt_tokens=512)}
SMOKE_WIDTH = 64  # the CPU-sized shapes at this width: the same modules, a fraction of the arithmetic
PROFILED_STEP = 3  # the timed step whose operators are profiled (left out of the step-time median)
RESERVE_SECONDS = 20.0  # space/presets/frontier.toml's train.reserve_seconds
TTT = {"ttt": "lora", "ttt_rank": 80, "ttt_chunk": 48}
HEAVIEST_QUANT = {"bits": {"*": 6, "tok_emb.weight": 7}, "clip": {"*": 12.85}, "quantizer": {"*": "gptq"},
                  "rank": {"*": 4}, "awq": {"*": 0.5}}
OFFICIAL_STEPS, OFFICIAL_WARMUP = 12, 3


class Report:
    """The part's figures, rewritten whole to `path` at each update (atomically: a reader never sees half a file)."""

    def __init__(self, path: str):
        self.path, self.values = path, {}

    def update(self, **values) -> None:
        self.values.update(values)
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(self.values, f, indent=2)
        os.replace(self.path + ".tmp", self.path)


def graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process (a recompile is one more)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def recompile_reasons() -> list[str]:
    """Dynamo's recorded guard failures (why it recompiled), first line each."""
    from torch._dynamo.utils import guard_failures

    return [str(reason).splitlines()[0][:200] for reasons in guard_failures.values() for reason in reasons]


def peak_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_memory": "not measured on the CPU"}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def with_settings(config: RunConfig, section: str, **settings) -> RunConfig:
    """`config` with settings of one section replaced, validated as a config file is."""
    data = config_to_dict(config)
    data[section].update(settings)
    return config_from_dict(data)


def preset_config(name: str, smoke: bool) -> RunConfig:
    """The baseline config, or the frontier preset's baseline trial (their CPU-sized counterparts with --smoke)."""
    if smoke:  # fused_ops off: the library kernels (SDPA...) the CUDA path runs, not the CPU fast paths
        config = with_settings(resolve_config("tiny" if name == "baseline" else "frontier_tiny"), "model", model_dim=SMOKE_WIDTH)
        return with_settings(config, "train", fused_ops=False)
    if name == "baseline":
        return resolve_config("baseline")
    from space.sample import ParamSource, suggest_config
    from space.spec import load_space

    space = load_space("frontier")
    return suggest_config(space, ParamSource(space.baseline))[0]


def model_and_data(name: str, args):
    from pgolf.model import GPT
    from pgolf.submission import setup_runtime

    config = preset_config(name, args.smoke)
    runtime = setup_runtime(args.device)
    torch.manual_seed(config.train.seed)
    return config, bundle_data_paths(args.data, config.model.vocab_size), runtime, GPT(config.model).to(runtime.device)


# --- attention: which SDPA implementation ran, read off a profile of one training step ---

SDPA_KINDS = ("cudnn", "flash", "efficient", "math")
KERNEL_WORDS = re.compile(r"flash|fmha|cudnn|attn|attention", re.I)


def attention_summary(profile) -> dict:
    """The SDPA operators the step dispatched (aten::_scaled_dot_product_<kind>_attention...) and, on a GPU, the
    attention kernels that ran. No SDPA operator at all: attention was computed from matmuls and a softmax (the
    math path decomposed into the compiled graph, or attention that is not SDPA)."""
    events = profile.key_averages()
    ops = sorted({e.key for e in events if e.key.startswith("aten::_scaled_dot_product")})
    kinds = [kind for kind in SDPA_KINDS if any(kind in op for op in ops)]
    kernels = sorted({e.key[:100] for e in events if str(getattr(e, "device_type", "")).endswith("CUDA") and KERNEL_WORDS.search(e.key)})
    return {"attention": "+".join(kinds) if kinds else "math (no fused SDPA operator ran)", "sdpa_ops": ops,
            "attention_kernels": kernels[:6]}


class WatchedLoader:
    """The training loader, watched: each step's first pass takes its batch here, so this is where a step starts.
    It records when each step started and how many graphs were compiled by then, profiles one timed step, and calls
    on_step(step) at each start. Everything else is the loader's own (attribute access passes through)."""

    def __init__(self, loader, scale: Scale, device: torch.device, on_step):
        self.loader, self.scale, self.device, self.on_step = loader, scale, device, on_step
        self.calls, self.starts, self.profile, self.attention = 0, {}, None, None

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def next_batch(self, *args, **kwargs):
        if self.calls % self.scale.passes == 0:
            step = self.calls // self.scale.passes - self.scale.warmup + 1  # 1 = the first timed step; <= 0: warmup
            synchronize(self.device)
            self.starts[step] = (time.perf_counter(), graphs_compiled())
            if self.profile is not None:
                self.profile.stop()
                self.attention, self.profile = attention_summary(self.profile), None
            if step == PROFILED_STEP:
                activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
                self.profile = torch.profiler.profile(activities=activities)
                self.profile.start()
            self.on_step(step)
        self.calls += 1
        return self.loader.next_batch(*args, **kwargs)

    def step_seconds(self) -> dict:
        """Seconds of each timed step that has a successor (start to next start), by step."""
        return {s: self.starts[s + 1][0] - t for s, (t, _) in self.starts.items() if s >= 1 and s + 1 in self.starts}


def step_figures(loader: WatchedLoader, validate_at: int, started: float, graphs_before: int) -> dict:
    """ms per step: the median of the timed steps before any validation, the first and the profiled one left out;
    compile seconds: the warmup's wall time less its steps at that rate; the graphs compiled after the warmup."""
    scale, seconds = loader.scale, loader.step_seconds()
    last_steady = (validate_at or scale.steps) - 1  # the step that validates runs into its validation
    steady = [s for i, s in seconds.items() if 2 <= i <= last_steady and i != PROFILED_STEP]
    figures = {"timed_steps_started": max(loader.starts, default=0)}
    if 1 in loader.starts:
        figures["graphs_compiled_in_warmup"] = loader.starts[1][1] - graphs_before
        figures["graphs_compiled_after_warmup"] = graphs_compiled() - loader.starts[1][1]
    if steady:
        ms = 1000 * statistics.median(steady)
        figures.update(ms_per_step=round(ms, 1), ms_per_pass=round(ms / scale.passes, 2),
                       tokens_per_second=round(scale.pass_tokens * scale.passes / (ms / 1000)),
                       compile_seconds=round(max(0.0, loader.starts[1][0] - started - scale.warmup * ms / 1000), 1))
    if validate_at:
        figures["ms_per_step_after_validation"] = [round(1000 * s, 1) for i, s in sorted(seconds.items()) if i > validate_at]
    return figures


def shape_config(config: RunConfig, name: str, scale: Scale, compile_mode: str) -> RunConfig:
    """The preset's config trained as the shape part runs it: passes of scale.pass_tokens, scale.passes a step, a few
    steps after a warmup, no wallclock cap; the frontier shape validates (at its eval length) before its last two."""
    return with_settings(config, "train", batch_tokens=scale.pass_tokens * scale.passes, micro_batch_tokens=scale.pass_tokens,
                         iterations=scale.steps, warmup_steps=scale.warmup, max_wallclock_seconds=0.0, reserve_seconds=0.0,
                         val_every=scale.steps - 2 if name == "frontier" else 0, val_every_seconds=0.0,
                         val_tokens=4 * config.eval_seq_len(), log_every=0, compile=compile_mode)


def calibration_config(config: RunConfig, scale: Scale) -> RunConfig:
    return with_settings(config, "quant", calib_tokens=scale.calib_tokens, **HEAVIEST_QUANT)


def ttt_settings(config: RunConfig):
    return dataclasses.replace(config.resolved_eval(), **TTT)


def part_shape(args, report: Report) -> None:
    from pgolf.model import count_params
    from pgolf.run import subset_validator
    from pgolf.shards import BatchLoader
    from pgolf.train import train

    scale = SCALES["smoke" if args.smoke else "full"]
    config, data, runtime, model = model_and_data(args.arg, args)
    device = runtime.device
    config = shape_config(config, args.arg, scale, args.compile)
    validate_at = config.train.val_every
    report.update(shape=args.arg, smoke=args.smoke, device=str(device), params=count_params(model), tokens_per_pass=scale.pass_tokens,
                  passes_per_step=scale.passes, seq_len=config.train.seq_len, eval_seq_len=config.eval_seq_len(),
                  vocab_size=config.model.vocab_size, compile=config.train.compile, warmup_steps=scale.warmup, timed_steps=scale.steps)
    validator = subset_validator(config, data, runtime)
    graphs_before, started = graphs_compiled(), time.perf_counter()
    loader = WatchedLoader(BatchLoader(data.train_pattern, config.model.vocab_size, 0, 1, device), scale, device,
                           on_step=lambda step: step > 1 and report.update(**step_figures(loader, validate_at, started, graphs_before)))

    def validate(m):
        begun, before = time.perf_counter(), graphs_compiled()
        bpb = validator(m)
        report.update(validation={"seconds": round(time.perf_counter() - begun, 2), "graphs_compiled": graphs_compiled() - before,
                                  "seq_len": config.eval_seq_len(), "tokens": config.train.val_tokens})
        return bpb

    reset_peak(device)
    result = train(model, config.train, loader, device, validate=validate if validate_at else None, log=lambda *_: None)
    loader.starts[scale.steps + 1] = (loader.starts[scale.steps][0] + result.step_seconds[-1], graphs_compiled())
    figures = step_figures(loader, validate_at, started, graphs_before)
    if validate_at:  # graphs compiled inside validation (an eval graph) are not training recompiles
        figures["graphs_compiled_after_warmup"] -= report.values.get("validation", {}).get("graphs_compiled", 0)
    report.update(ok=True, **figures, **peak_memory(device), **(loader.attention or {"attention": "not profiled"}),
                  recompile_reasons=recompile_reasons()[:4])


def part_calibration(args, report: Report) -> None:
    from pgolf.gptq import check_calibration
    from pgolf.submission import calibrate, export_model

    scale = SCALES["smoke" if args.smoke else "full"]
    config, data, runtime, model = model_and_data("frontier", args)
    config = calibration_config(config, scale)
    check_calibration(data.train_pattern, config.train.seq_len, config.quant.calib_tokens)
    report.update(smoke=args.smoke, device=str(runtime.device), calib_tokens=scale.calib_tokens, seq_len=config.train.seq_len,
                  quant={k: v for k, v in HEAVIEST_QUANT.items()}, reserve_seconds=RESERVE_SECONDS)
    reset_peak(runtime.device)
    started = time.perf_counter()
    calibration = calibrate(model, config, data.train_pattern, runtime.device)
    synchronize(runtime.device)
    calibrated = time.perf_counter()
    report.update(calibration_seconds=round(calibrated - started, 1))
    blob, _, _ = export_model(model, config, calibration)
    total = time.perf_counter() - started
    report.update(ok=True, gptq_and_pack_seconds=round(total - (calibrated - started), 1), total_seconds=round(total, 1),
                  within_reserve=total <= RESERVE_SECONDS, model_bytes=len(blob), **peak_memory(runtime.device))


def part_ttt(args, report: Report) -> None:
    from pgolf.bpb import ByteLuts, load_tokenizer
    from pgolf.shards import validation_tokens
    from pgolf.submission import score_tokens

    scale = SCALES["smoke" if args.smoke else "full"]
    config, data, runtime, model = model_and_data("frontier", args)
    settings = ttt_settings(config)
    vocab = config.model.vocab_size
    # Whole eval sequences of the split, at least scale.ttt_tokens of them.
    tokens = validation_tokens(data.val_pattern, settings.seq_len, vocab, limit=-(-scale.ttt_tokens // settings.seq_len) * settings.seq_len)
    luts = ByteLuts(load_tokenizer(data.tokenizer, vocab), vocab)
    documents = int((tokens[:-1] == config.model.bos_id).sum())
    report.update(smoke=args.smoke, device=str(runtime.device), tokens=tokens.numel() - 1, documents=documents,
                  eval_seq_len=settings.seq_len, **TTT)
    reset_peak(runtime.device)
    result = score_tokens(model, settings, tokens, luts, runtime)
    report.update(ok=True, ttt_seconds=round(result.seconds, 2), tokens_per_second=round(result.tokens / max(result.seconds, 1e-9)),
                  **peak_memory(runtime.device))


OFFICIAL_STEP = re.compile(r"^step:(\d+)/\d+ train_loss:\S+ train_time:(\d+(?:\.\d+)?)ms")
OFFICIAL_PEAK = re.compile(r"^peak memory allocated: (\d+) MiB reserved: (\d+) MiB")


def official_figures(log_lines, passes: int) -> dict:
    """Median step (ms) of an official train_gpt.py log, from its cumulative train_time (the first step left out)."""
    times = {int(m[1]): float(m[2]) for m in map(OFFICIAL_STEP.match, log_lines) if m}
    steps = [times[s] - times[s - 1] for s in sorted(times) if s >= 3 and s - 1 in times]
    figures = {"steps_logged": len(times)}
    if steps:
        ms = statistics.median(steps)
        figures.update(ms_per_step=round(ms, 2), ms_per_pass=round(ms / passes, 3))
    peaks = [m for m in map(OFFICIAL_PEAK.match, log_lines) if m]
    if peaks:
        figures.update(peak_allocated_gib=round(int(peaks[-1][1]) / 1024, 2), peak_reserved_gib=round(int(peaks[-1][2]) / 1024, 2))
    return figures


def part_official(args, report: Report) -> None:
    scale = SCALES["smoke" if args.smoke else "full"]
    data = bundle_data_paths(args.data, 1024)
    env = dict(os.environ, DATA_PATH=os.path.dirname(data.train_pattern), TOKENIZER_PATH=data.tokenizer, RUN_ID="gpu_check",
               ITERATIONS=str(OFFICIAL_STEPS), WARMUP_STEPS=str(OFFICIAL_WARMUP), TRAIN_LOG_EVERY="1", VAL_LOSS_EVERY="1000000",
               MAX_WALLCLOCK_SECONDS="0", TRAIN_BATCH_TOKENS=str(scale.pass_tokens * scale.passes), TRAIN_SEQ_LEN="1024")
    report.update(script=os.path.abspath(args.arg), tokens_per_pass=scale.pass_tokens, passes_per_step=scale.passes,
                  iterations=OFFICIAL_STEPS, warmup_steps=OFFICIAL_WARMUP)
    lines = []
    with tempfile.TemporaryDirectory(prefix="official-") as cwd:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, os.path.abspath(args.arg)], cwd=cwd, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        stopped = False
        for line in process.stdout:  # figures as they come: a run stopped by the time limit reports its steps so far
            lines.append(line.rstrip("\n"))
            if OFFICIAL_STEP.match(line):
                report.update(**official_figures(lines, scale.passes))
            if OFFICIAL_PEAK.match(line):  # training is over: its export and scoring would only spend the part's time
                process.terminate()
                stopped = True
                break
        code = process.wait()
    report.update(**official_figures(lines, scale.passes), wall_seconds=round(time.perf_counter() - started, 1),
                  **({"stopped_after_training": True} if stopped else {}))
    if code != 0 and not stopped:
        report.update(ok=False, error=f"exit code {code}: " + (lines[-1] if lines else "no output"))
    else:
        report.update(ok="ms_per_step" in report.values, **({} if "ms_per_step" in report.values else {"error": "no step lines in its log"}))


PARTS = {"shape": part_shape, "calibration": part_calibration, "ttt": part_ttt, "official": part_official}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("arg", nargs="?", default="", help="shape: baseline | frontier; official: the script's path")
    parser.add_argument("--data", required=True, help="the bundle's data folder")
    parser.add_argument("--out", required=True, help="the JSON file the figures go to")
    parser.add_argument("--device", default=None)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    args = parser.parse_args()
    if args.part == "shape" and args.arg not in ("baseline", "frontier"):
        parser.error(f"shape takes baseline or frontier, not {args.arg!r}")
    report = Report(args.out)
    try:
        PARTS[args.part](args, report)
    except Exception as exc:  # one line in the JSON, the traceback on stderr: the check goes on with its other parts
        import traceback

        traceback.print_exc()
        report.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
