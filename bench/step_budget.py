"""The speed-ratio conversion on CPU: a training cap in a reference machine's seconds, as a step budget per shape,
against the steps that machine really trains in those seconds.

The reference machine is this one run as 2 ranks (torchrun, gloo, one thread each); the local machine is 1 rank with
one thread, as a study's trials would run here. Three steps, all with search/budget/stepbudget.py's own functions:
1. the reference machine publishes its figures: the median step time of its reference shapes (2 ranks), written as a
   reference table (bench/out/step_budget_reference.toml) that a space can name in caps.train_reference;
2. the study's calibration: those shapes and two span shapes timed here (1 rank), the step-time model
   a + b * FLOPs/step fitted on them, the speed ratio taken against the table;
3. for each test shape (not used in the fit): the predicted reference step time and step budget for --seconds
   reference seconds, against a real run of that shape on the reference machine (2 ranks) under a wallclock cap of
   --seconds: the steps it trained and its measured median step time.
Printed: per shape, predicted vs measured ms/step on the reference machine (its fastest step, the probes' measure, and
its median) and predicted vs trained steps, then the mean and max relative error of each. The last column, the cap over
the run's median step, separates the two causes of a steps error: the model's (prediction vs fastest step) and the
machine's load while the run trained (median vs fastest), less about one step that the training loop's stop rule keeps
in hand (it stops when the next step, budgeted at 1.5x the slowest recent one, would cross the cap).

    python bench/step_budget.py [--seconds 20] [--probe-steps 6]
"""

import argparse
import dataclasses
import math
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.configfiles import resolve_config  # noqa: E402
from pgolf.config import config_from_dict, config_to_dict  # noqa: E402
from search.budget.references import reference_machine  # noqa: E402
from search.budget.stepbudget import (calibrate, fastest_step_seconds, flops_per_step, median_step_seconds, probe_config,  # noqa: E402
                                      run_probes)

TOKENS = 4096  # tokens per step of every shape (within the CPU probe size: the probes time the shapes as they train)
# label -> settings on the tiny config (4 x 256, 4 / 2 heads, MLP 2x, sp1024, seq 256)
REFERENCE_SHAPES = {"ref 2x128": {"model.num_layers": 2, "model.model_dim": 128},
                    "ref 4x192": {"model.num_layers": 4, "model.model_dim": 192}}
SPAN_SHAPES = {"span 1x96": {"model.num_layers": 1, "model.model_dim": 96},
               "span 6x256": {"model.num_layers": 6, "model.model_dim": 256}}
TEST_SHAPES = {"3x128": {"model.num_layers": 3, "model.model_dim": 128},
               "2x256 MLP 3x": {"model.num_layers": 2, "model.model_dim": 256, "model.mlp_mult": 3.0},
               "5x160 seq 128": {"model.num_layers": 5, "model.model_dim": 160, "train.seq_len": 128},
               "4x256": {"model.num_layers": 4},
               "3x192 sp4096": {"model.num_layers": 3, "model.model_dim": 192, "model.vocab_size": 4096},
               "2x64 looped x3": {"model.num_layers": 2, "model.model_dim": 64, "model.loop_repeats": 3, "model.loop_len": 2,
                                  "model.loop_start": 0}}


def shape(settings: dict):
    data = config_to_dict(resolve_config("tiny"))
    data["train"].update(batch_tokens=TOKENS, log_every=0)
    for key, value in settings.items():
        section, name = key.split(".")
        data[section][name] = value
    return config_from_dict(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0, help="the cap, in reference seconds, of each check run")
    parser.add_argument("--probe-steps", type=int, default=6)
    args = parser.parse_args()
    started = time.time()
    out = os.path.join(ROOT, "bench", "out")
    os.makedirs(out, exist_ok=True)

    # 1. The reference machine's published figures: 2 ranks of this machine.
    refs = {label: shape(s) for label, s in REFERENCE_SHAPES.items()}
    measured = run_probes([probe_config(c, "cpu", args.probe_steps) for c in refs.values()], "cpu", threads=1, ranks=2)
    table = os.path.join(out, "step_budget_reference.toml")
    with open(table, "w", encoding="utf-8") as f:
        f.write(f'name = "cpu-2ranks"\ndescription = "{socket.gethostname()}, 2 ranks under torchrun (gloo), 1 thread each"\n')
        for (label, settings), result in zip(REFERENCE_SHAPES.items(), measured["results"]):
            shown = ", ".join(f'"{k}" = {v!r}' for k, v in {**settings, "train.batch_tokens": TOKENS}.items())
            f.write(f'\n[[shapes]]\nlabel = "{label}"\nconfig = "tiny"\nset = {{ {shown} }}\n'
                    f"step_ms = {1000 * fastest_step_seconds(result):.3f}\n"
                    f'source = "bench/step_budget.py: 2 ranks of this machine, fastest of {args.probe_steps - 2} steps"\n')
    machine = reference_machine(table)
    print(f"reference machine {machine.name}: " + ", ".join(f"{s.label} {s.step_ms:.1f} ms/step" for s in machine.shapes))

    # 2. The calibration a study makes: reference and span shapes timed here, 1 rank.
    spans = [(label, shape(s)) for label, s in SPAN_SHAPES.items()]
    calibration = calibrate(machine, spans, "cpu", threads=1, steps=args.probe_steps)

    # 3. Each test shape: the budget for --seconds reference seconds, against a run on the reference machine under that cap.
    tests = {label: shape(s) for label, s in TEST_SHAPES.items()}
    capped = [dataclasses.replace(c, train=dataclasses.replace(c.train, iterations=100000, max_wallclock_seconds=args.seconds))
              for c in tests.values()]
    runs = run_probes(capped, "cpu", threads=1, ranks=2)["results"]
    print(f"\n{'shape':16s} {'GFLOP/step':>10s} {'ref ms/step pred':>16s} {'fastest':>8s} {'error':>7s} {'median':>8s} "
          f"{'steps pred':>10s} {'trained':>8s} {'error':>7s} {'cap/median':>10s}")
    step_errors, count_errors = [], []
    for (label, config), run in zip(tests.items(), runs):
        predicted = calibration.reference_step_seconds(config)
        steps = int(args.seconds / predicted)
        real = fastest_step_seconds(run)
        step_errors.append(predicted / real - 1)
        count_errors.append(steps / run["steps"] - 1)
        print(f"{label:16s} {flops_per_step(config) / 1e9:10.2f} {1000 * predicted:16.1f} {1000 * real:8.1f} {step_errors[-1]:+7.1%} "
              f"{1000 * median_step_seconds(run):8.1f} {steps:10d} {run['steps']:8d} {count_errors[-1]:+7.1%} "
              f"{args.seconds / median_step_seconds(run):10.1f}")
    print(f"\nstep-time model on the reference machine: relative error mean {statistics.fmean(abs(e) for e in step_errors):.1%}, "
          f"max {max(abs(e) for e in step_errors):.1%} over {len(step_errors)} shapes")
    # On a shared machine the load drifts between the reference figures' measurement and the check runs: that moves every
    # shape's error by one common factor. Without it, what is left is the model's error between shapes.
    common = math.exp(statistics.fmean(math.log(1 + e) for e in step_errors))
    shape_errors = [(1 + e) / common - 1 for e in step_errors]
    print(f"  without their common factor {common:.3f} (the load's drift between the reference figures and these runs): "
          f"mean {statistics.fmean(abs(e) for e in shape_errors):.1%}, max {max(abs(e) for e in shape_errors):.1%} "
          f"({', '.join(f'{e:+.0%}' for e in shape_errors)})")
    print(f"steps predicted vs trained in {args.seconds:g} reference s: relative error mean "
          f"{statistics.fmean(abs(e) for e in count_errors):.1%}, max {max(abs(e) for e in count_errors):.1%}")
    print(f"(the model's own fit on its {len(calibration.probes)} probes here: mean {calibration.fit_error['mean']:.1%}, max "
          f"{calibration.fit_error['max']:.1%}; {time.time() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
