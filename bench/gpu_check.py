"""The GPU check: one command, sized for under 8 minutes on one H100/H200, that writes one JSON summary.

1. the CUDA-marked tests (tests/test_cuda.py);
2. the `baseline` config trained for --train-seconds (120) on the GPU: steps, ms/step, tokens/s;
3. its artifact evaluated (post-roundtrip bpb, eval seconds, bytes);
4. a 2-trial study of the demo space on the GPU (`search run --device cuda`).
Where torch sees no CUDA device, parts 2-4 are reported "skipped", and the same steps run as a short CPU smoke
(the tiny config for a few steps, a 1-trial micro study) so that this script is checked before any GPU sees it;
smoke figures are CPU figures, labelled so.

    bench/gpu_check.sh [--out FILE] [--train-seconds 120] [--data DIR]
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from pgolf.datasets import default_data_root  # noqa: E402


def timed(command: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)
    return done, time.time() - started


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


def cuda_tests() -> dict:
    done, seconds = timed([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "tests/test_cuda.py"])
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout)}
    return {"ok": done.returncode == 0, "seconds": round(seconds, 1), **counts,
            **({} if done.returncode == 0 else {"error": last_line(done)})}


def train_and_evaluate(config: str, device: str, overrides: list[str], data: str, out: str) -> dict:
    command = [sys.executable, "-m", "pgolf.cli", "run", config, "--device", device, "--data", data, "--out", out, "--force"]
    for override in overrides:
        command += ["--set", override]
    done, seconds = timed(command)
    if done.returncode != 0:
        return {"ok": False, "error": last_line(done)}
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    return {"ok": True, "config": config, "device": device, "wall_seconds": round(seconds, 1), "steps": m["steps"],
            "train_seconds": round(m["train_seconds"], 2), "ms_per_step": round(1000 * m["train_seconds"] / max(m["steps"], 1), 2),
            "tokens_per_second": round(m["train_tokens"] / max(m["train_seconds"], 1e-9)), "val_bpb_post": m["val_bpb_post"],
            "eval_seconds": round(m["eval_seconds"], 2), "artifact_bytes": m["artifact_bytes"]}


def study(space: str, device: str, trials: int, data: str, results: str) -> dict:
    done, seconds = timed([sys.executable, "-m", "search.cli", "run", "--space", space, "--study", "gpu-check", "--trials", str(trials),
                           "--device", device, "--data", data, "--results", results, "--sampler-seed", "0"])
    if done.returncode != 0:
        return {"ok": False, "error": last_line(done)}
    best = re.findall(r"best feasible bpb (\S+)", done.stdout)
    return {"ok": True, "space": space, "device": device, "trials": trials, "wall_seconds": round(seconds, 1),
            "best_feasible_bpb": best[-1] if best else None}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", os.path.join(ROOT, "bench", "out")), "gpu_check.json"))
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--data", default=default_data_root())
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    summary = {"cuda": cuda, "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
               "torch": torch.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    started = time.time()
    summary["cuda_tests"] = cuda_tests()
    work = tempfile.mkdtemp(prefix="gpu-check-")
    if cuda:
        run = train_and_evaluate("baseline", "cuda", [f"train.max_wallclock_seconds={args.train_seconds}"], args.data,
                                 os.path.join(work, "baseline"))
        summary["baseline_train"] = {k: v for k, v in run.items() if k not in ("val_bpb_post", "eval_seconds", "artifact_bytes")}
        summary["baseline_eval"] = {k: run[k] for k in ("val_bpb_post", "eval_seconds", "artifact_bytes") if k in run} or run
        summary["study"] = study("demo", "cuda", 2, args.data, os.path.join(work, "results"))
    else:
        for part in ("baseline_train", "baseline_eval", "study"):
            summary[part] = {"skipped": "no CUDA device"}
        summary["cpu_smoke"] = {
            "train_and_evaluate": train_and_evaluate("tiny", "cpu", ["train.iterations=3", "train.max_wallclock_seconds=0"], args.data,
                                                     os.path.join(work, "tiny")),
            "study": study(os.path.join(ROOT, "tests", "spaces", "micro.toml"), "cpu", 1, args.data, os.path.join(work, "results"))}
    summary["seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    parts = [summary["cuda_tests"]] + [v for k, v in summary.items() if isinstance(v, dict) and "ok" in v]
    smoke = summary.get("cpu_smoke", {})
    return 0 if all(p.get("ok", True) for p in parts + list(smoke.values())) else 1


if __name__ == "__main__":
    sys.exit(main())
