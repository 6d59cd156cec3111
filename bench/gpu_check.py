"""The GPU check: one command, at most 7 minutes on one H200, one JSON summary (bench/gpu_check.sh starts it).

Parts, in this order, each in a process of its own under its own time limit (so one slow part cannot eat the
others' time), all under one overall budget (--budget, 405 s: the install before it takes seconds):
    cuda_tests       the CUDA-marked tests (tests/test_cuda.py)
    baseline_shape   the baseline at 65,536 tokens per pass, 8 passes a step: ms/step and per pass, peak memory,
                     compile seconds, graphs compiled after the warmup, the attention kernel (bench/gpu_parts.py)
    official         the official train_gpt.py's baseline step on the same GPU, when --official PATH names the
                     user's copy (never shipped); with baseline_shape it gives pgolf_over_official, the ratio of steps
    frontier_shape   the same at the frontier preset's baseline trial, with one validation at its eval length
    calibration      calibration + GPTQ seconds at the frontier shape's heaviest allocation, against the 20 s reserve
    ttt              TTT seconds and peak memory on 16,384 tokens at the frontier shape
A part that cannot run says "skipped" and why; a part stopped by its limit reports what it had measured. Where
torch sees no CUDA device every GPU part is skipped, and cpu_smoke runs the same parts at CPU sizes (the CUDA
tests with PGOLF_TEST_DEVICE=cpu, the shapes at the tiny configs, the official part on tests/scripts/
official_style.py): a check of this code before a GPU sees it. Its figures are CPU figures.

    bench/gpu_check.sh [--official PATH] [--out FILE] [--budget 405] [--parts a,b] [--no-smoke] [--smoke-compile on]
                       [--limit-scale 1]
"""

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench.gpu_bundle import BUNDLE_DIR  # noqa: E402

PARTS_SCRIPT = os.path.join(ROOT, "bench", "gpu_parts.py")
OFFICIAL_STYLE = os.path.join(ROOT, "tests", "scripts", "official_style.py")
MIN_PART_SECONDS = 15  # a part is not started with less of the budget left


@dataclass(frozen=True)
class Part:
    name: str
    limit: float  # seconds on a GPU
    smoke_limit: float  # seconds at CPU sizes


# The order is the report's; with --official the last parts may find the budget spent (run them with --parts then).
PARTS = (Part("cuda_tests", 120, 240), Part("baseline_shape", 80, 150), Part("official", 80, 60),
         Part("frontier_shape", 130, 240), Part("calibration", 45, 120), Part("ttt", 40, 120))


def part_command(name: str, args, smoke: bool, out: str) -> list[str] | str:
    """The part's command, or why it cannot run."""
    if name == "cuda_tests":
        return [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"]
    common = ["--data", args.data, "--out", out] + (["--smoke", "--device", "cpu", "--compile", args.smoke_compile] if smoke else ["--device", "cuda"])
    if name == "official":
        script = OFFICIAL_STYLE if smoke else args.official
        if not script:
            return "no --official PATH given (the official train_gpt.py is never shipped: pass your copy, or bundle it)"
        if not os.path.isfile(script):
            return f"--official {script}: no such file"
        return [sys.executable, PARTS_SCRIPT, "official", os.path.abspath(script)] + common
    if name.endswith("_shape"):
        return [sys.executable, PARTS_SCRIPT, "shape", name.removesuffix("_shape")] + common
    return [sys.executable, PARTS_SCRIPT, name] + common


def pytest_counts(output: str) -> dict:
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output)}


def run_part(part: Part, args, smoke: bool, limit: float, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-check-part-") as work:
        out = os.path.join(work, "part.json")
        command = part_command(part.name, args, smoke, out)
        if isinstance(command, str):
            return {"skipped": command}
        env = dict(os.environ, PYTHONUNBUFFERED="1", **({"PGOLF_TEST_DEVICE": "cpu"} if smoke and part.name == "cuda_tests" else {}))
        started = time.perf_counter()
        # A session of its own: at the limit the part and everything it started are stopped together.
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        try:
            output, _ = process.communicate(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            timed_out = True
        seconds = round(time.perf_counter() - started, 1)
        log(f"===== {'cpu_smoke.' if smoke else ''}{part.name}: {seconds} s (limit {limit:.0f} s), exit {process.returncode}\n{output}")
        if part.name == "cuda_tests":
            result = {"ok": process.returncode == 0 and not timed_out, **pytest_counts(output)}
        else:
            try:
                with open(out, encoding="utf-8") as f:
                    result = json.load(f)
            except (OSError, json.JSONDecodeError):
                result = {}
            result.setdefault("ok", False)
        result.update(process_seconds=seconds, limit_seconds=round(limit))
        if timed_out:
            result.update(ok=False, error=f"stopped at its {limit:.0f} s limit; the figures above are what it had measured")
        elif not result["ok"] and "error" not in result:
            lines = output.strip().splitlines()
            result["error"] = lines[-1][:400] if lines else f"exit code {process.returncode}"
        return result


def run_parts(args, smoke: bool, deadline: float, log) -> dict:
    results = {}
    for part in PARTS:
        if args.parts and part.name not in args.parts:
            results[part.name] = {"skipped": "not in --parts"}
            continue
        left = deadline - time.perf_counter()
        if left < MIN_PART_SECONDS:
            results[part.name] = {"skipped": f"the {args.budget:.0f} s budget is spent ({left:.0f} s left)"}
            continue
        results[part.name] = run_part(part, args, smoke, min(args.limit_scale * (part.smoke_limit if smoke else part.limit), left), log)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", default="", help="path of the official train_gpt.py, to time its baseline step "
                        "(default: gpu_bundle/official/train_gpt.py where bench/gpu_prepare.sh --official put one)")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT") or os.path.join(ROOT, "bench", "out"), "gpu_check.json"))
    parser.add_argument("--budget", type=float, default=405.0, help="seconds for all parts together")
    parser.add_argument("--parts", default="", help="comma-separated subset of: " + ", ".join(p.name for p in PARTS))
    parser.add_argument("--bundle", default=BUNDLE_DIR, help="the folder bench/gpu_prepare.sh filled")
    parser.add_argument("--no-smoke", action="store_true", help="without a GPU, skip the CPU-sized run of the parts")
    parser.add_argument("--limit-scale", type=float, default=1.0, help="multiplies every part's time limit (a busy machine)")
    parser.add_argument("--smoke-compile", default="off", choices=("auto", "on", "off"), help="torch.compile in the CPU-sized shapes")
    args = parser.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(args.parts) - {p.name for p in PARTS})
    if unknown:
        parser.error(f"--parts: no part named {', '.join(unknown)} (parts: {', '.join(p.name for p in PARTS)})")
    args.data = os.path.join(os.path.abspath(args.bundle), "data")
    bundled = os.path.join(os.path.abspath(args.bundle), "official", "train_gpt.py")
    args.official = args.official or (bundled if os.path.isfile(bundled) else "")
    if not os.path.isdir(args.data):
        print(f"error: {args.data} does not exist: run bench/gpu_prepare.sh first (where the package index is reachable)", file=sys.stderr)
        return 2
    os.environ["PGOLF_DATA"] = args.data  # the tests' data (tests/conftest.py) is the bundle's, as on a bare machine
    started = time.perf_counter()
    deadline = started + args.budget
    cuda = torch.cuda.is_available()
    summary = {"cuda": cuda, "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
               "torch": torch.__version__, "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "budget_seconds": args.budget}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    log_path = os.path.splitext(args.out)[0] + ".log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        def log(text: str) -> None:
            log_file.write(text + "\n")
            log_file.flush()

        if cuda:
            summary.update(run_parts(args, False, deadline, log))
        else:
            summary.update({p.name: {"skipped": "no CUDA device"} for p in PARTS})
            if not args.no_smoke:
                summary["cpu_smoke"] = run_parts(args, True, deadline, log)
    base, official = summary.get("baseline_shape", {}), summary.get("official", {})
    if base.get("ms_per_step") and official.get("ms_per_step"):
        summary["pgolf_over_official"] = round(base["ms_per_step"] / official["ms_per_step"], 3)
    parts = [v for v in summary.values() if isinstance(v, dict) and "ok" in v] + [v for v in summary.get("cpu_smoke", {}).values() if "ok" in v]
    summary["ok"] = all(p["ok"] for p in parts)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} (each part's output: {log_path})")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
