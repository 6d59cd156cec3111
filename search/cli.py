"""`search`: run, resume and inspect studies; Pareto fronts, reports, export, verify, confirm, allocate."""

import argparse
import os

from pgolf import cli as pgolf_cli
from pgolf.cliargs import COUNT, INDEX, POSITIVE, SECONDS, SEED, OneLineParser, absolute_paths, ranged
from pgolf.config import CODE_FORMS
from pgolf.datasets import default_data_root
from pgolf.staging import check_target
from pgolf.storage import FORMAT_AXES

from search.backends import BACKENDS
from search.script import ScriptError
from search.budget.stepbudget import BudgetError
from search.samplers import SAMPLERS, sampler_help
from search.study import RESULTS_DIR, StudyError, absolute_storage
from search.submit.verify import VerifyError
from space.spec import GRANULARITIES, SENSITIVITY_METHODS, SpaceError

USER_ERRORS = pgolf_cli.USER_ERRORS + (ScriptError, SpaceError, StudyError, VerifyError, BudgetError)


def cmd_run(args) -> int:
    from search.runner import start_study

    start_study(args)
    return 0


def cmd_resume(args) -> int:
    from search.runner import resume_study

    resume_study(args)
    return 0


def cmd_status(args) -> int:
    from search.outputs.status import print_status

    print_status(args.name, args.results)
    return 0


def cmd_pareto(args) -> int:
    from search.outputs.pareto import pareto_page

    print(f"wrote {pareto_page(args.name, args.results, args.out)}")
    return 0


def cmd_report(args) -> int:
    from search.outputs.report import report_page

    print(f"wrote {report_page(args.name, args.results, args.out)}")
    return 0


def cmd_export(args) -> int:
    from search.submit.export import export_trial

    submission = export_trial(args.name, args.results, args.trial, args.out, force=args.force, replace=args.replace,
                              legality=not args.skip_legality, log=print)
    print(f"wrote {args.out}: val_bpb {submission['val_bpb']:.6f}, {submission['bytes_total']:,} bytes "
          f"(code {submission['bytes_code']:,}); `search verify {args.out}` checks it")
    return 0


def cmd_verify(args) -> int:
    from search.submit.verify import verify

    if args.legality:
        from search.submit.legality import check_legality

        conditions = check_legality(args.dir, args.data, args.device)
        for condition in conditions:
            print(condition.line())
        failed = [c.name for c in conditions if not c.passed]
        print(f"{args.dir}: " + (f"fails {', '.join(failed)}" if failed else "passes all four legality conditions"))
        return 1 if failed else 0
    # Without --run the tolerance is the eval-only re-score's (default: exact); with it, the run's (default: the seed spread).
    report = verify(args.dir, args.data, 0.0 if args.run or args.tolerance is None else args.tolerance, args.device, args.tokenizer)
    if "line" in report:  # a script export: its own line (search/script/export.py)
        print(report["line"])
    else:
        print(f"verified {args.dir}: {report['counted_bytes']:,} bytes <= cap {report['cap_bytes']:,}; val_bpb "
              f"{report['val_bpb']!r} equals the {report['recorded_bpb']!r} recorded by {report['origin']} "
              f"(difference {report['difference']:.1e})")
    if args.run:
        from pgolf.files import read_json
        from search.submit.files import SOURCE_FILE
        from search.submit.from_scratch import run_from_scratch

        record = read_json(os.path.join(args.dir, SOURCE_FILE), "export record")
        print(run_from_scratch(args.dir, record, args.tolerance, args.data, args.tokenizer, args.device)["line"])
    return 0


def cmd_confirm(args) -> int:
    from search.submit.confirm import confirm

    s = confirm(args.name, args.results, args.trial, args.seeds, args.reference, args.device, same_steps=args.same_steps, ranks=args.ranks)
    budget = s.get("budget")
    if budget:  # a trial budgeted in a reference machine's seconds, re-run under that cap: its steps against the prediction
        for seed, trained, step_ms, error in zip(s["seeds"], budget["trained_steps"], budget["step_ms"], budget["errors"]):
            print(f"seed {seed}: trained {trained} steps in {budget['reference_seconds']:g} s at {step_ms:.2f} ms/step; predicted "
                  f"{budget['predicted_steps']} at {budget['predicted_step_ms']:.2f} ms/step on {budget['machine']} "
                  f"(prediction {error:+.1%})")
    for seed, row in zip(s["seeds"], s["steps"] if budget is None else []):
        if row["differs"]:
            print(f"warning: seed {seed} trained {row['steps']} steps at {row['step_ms']:.0f} ms/step against the trial's "
                  f"{row['original_steps']} at {row['original_step_ms']:.0f} ms/step: not the same model (a busier or slower "
                  f"machine under the wallclock cap); compare on an idle machine, or pass --same-steps")
    print(f"trial {s['trial']}: bpb {s['mean_bpb']:.5f} +- {s['std_bpb']:.5f} over seeds {s['seeds']} "
          f"(max {s['max_bytes']:,} bytes); vs reference {s['reference_bpb']:.5f}: {s['improvement_nats']:+.5f} nats, "
          f"one-sided t = {s['t']:.2f}, p = {s['p']:.4g} for an improvement of at least 0.005 nats -> "
          f"{'meets' if s['record'] else 'does not meet'} the record bar (p < 0.01)")
    return 0


def format_flag(axis) -> str:
    return "--" + axis.space_key.replace("_", "-")


def cmd_allocate(args) -> int:
    from search.allocation.command import allocate_checkpoint, format_table, offered_by_default, parse_list

    options = {key: value for key, value in (
        ("bits", parse_list(args.bits, "--bits")), ("embedding_bits", parse_list(args.embedding_bits, "--embedding-bits")),
        ("clip", parse_list(args.clip, "--clip", float)), ("eval_stride", parse_list(args.strides, "--strides")),
        ("eval_repeats", parse_list(args.repeats, "--repeats")), ("granularity", args.granularity),
        ("compressors", parse_list(args.compressors, "--compressors", str)), ("row_orders", parse_list(args.row_orders, "--row-orders", str)),
        *((axis.space_key, parse_list(getattr(args, axis.space_key), format_flag(axis), axis.kind) if axis.per_tensor
           else getattr(args, axis.space_key)) for axis in FORMAT_AXES),
        ("sensitivity", args.sensitivity)) if value is not None}
    options = offered_by_default(options)
    out = args.out or f"allocation-{args.cap}"
    # Before the allocation's minutes of work, and naming this command's flag (staged_dir's default is pgolf's --force).
    check_target(os.path.abspath(out), args.replace, "--replace")
    metrics = allocate_checkpoint(args.checkpoint, args.cap, out, args.data, args.tokenizer, args.seq_len,
                                  args.eval_seconds, options, args.device, args.replace, code=args.code)
    print(format_table(metrics))
    print(f"wrote {out} ({metrics['chosen']}: {metrics['artifact_bytes']:,} bytes, val_bpb {metrics['val_bpb_post']:.6f})")
    return 0


def cmd_script_info(args) -> int:
    from search.script.knobs import format_table, read_script

    print(format_table(read_script(args.path)))
    return 0


def add_run_options(p, resume: bool) -> None:
    p.add_argument("--trials", type=COUNT, help="total finished trials the study should reach" + ("" if resume else " (default: the space's)"))
    p.add_argument("--timeout", type=SECONDS, help="stop starting trials after this many seconds" + ("" if resume else " (default: the space's)"))
    p.add_argument("--workers", type=COUNT, help="trials running at once (default: 1)")
    p.add_argument("--backend", choices=tuple(BACKENDS), help="where trials run: local processes, or Ray Tune trials "
                   "on a Ray cluster (default: " + ("the study's" if resume else "local") + ")")
    p.add_argument("--address", help="tune: the Ray cluster's HOST:PORT (default: start a Ray on this machine)")
    p.add_argument("--scheduler", choices=("fifo", "asha"), help="tune: asha stops trials early by Tune's ASHA over the "
                   "validation reports; fifo leaves it to the space's [search] pruner (default: fifo)")
    p.add_argument("--gpus-per-trial", type=ranged(float, low=0), help="tune: GPUs per trial (default: the space's run.gpus_per_trial, "
                   "else 1 where the cluster has GPUs)")
    p.add_argument("--cpus-per-trial", type=POSITIVE, help="tune: CPUs per trial (default: the space's run.cpus_per_trial, "
                   "else the cluster's CPUs / workers)")
    p.add_argument("--ranks-per-trial", type=COUNT, help="DDP ranks each trial trains with: GPUs on CUDA, shares of the cores "
                   "on CPU (default: " + ("the study's" if resume else "the space's run.ranks_per_trial, else 1") + ")")
    p.add_argument("--device", help="device for trials: cpu, cuda (default: the space's run.device)")
    p.add_argument("--data", help="data root (default: " + ("the one the study started with" if resume else
                   "the space's run.data, relative to the working directory; else PGOLF_DATA or ../shared/data") + ")")
    p.add_argument("--rerun-top", type=INDEX, help="after sampling, re-run the best N configurations with new seeds "
                   "(default: the space's search.rerun_top)")
    p.add_argument("--promote-ranks", type=INDEX, help="a promotion ladder: re-run the --rerun-top best on this many ranks "
                   "(sampled trials train on --ranks-per-trial at the step-equivalent budget) and rank by those runs "
                   "(default: the space's search.promote_ranks; 0 = off)")
    p.add_argument("--rerun-seeds", type=COUNT, help="new seeds per re-run configuration (default: the space's search.rerun_seeds)")
    p.add_argument("--results", default=RESULTS_DIR, help="folder holding studies (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="search", description="Architecture and bit-allocation search for Parameter Golf.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start a study (no arguments: the demo preset on ../shared/data)")
    p.add_argument("--space", default="demo", help="a space file or preset: demo | challenge (default: %(default)s)")
    p.add_argument("--study", help="study name (default: <space>-<date>-<time>)")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="tpe", help=sampler_help())
    p.add_argument("--sampler-seed", type=SEED, help="seed of the sampler (training seeds vary only in re-runs)")
    p.add_argument("--objectives", choices=("bpb", "bpb,bytes"), default="bpb", help="bpb, or bpb,bytes for a Pareto study")
    p.add_argument("--storage", help="Optuna storage URL (default: SQLite for 1 worker, a journal file for more)")
    add_run_options(p, resume=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a study; trials left running by a killed process are re-run")
    p.add_argument("name")
    add_run_options(p, resume=True)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="table of a study's trials and its best feasible trial")
    p.add_argument("name")
    p.add_argument("--results", default=RESULTS_DIR)
    p.set_defaults(func=cmd_status)

    for command, func, what in (("pareto", cmd_pareto, "interactive Pareto front page (bpb vs bytes, vs train seconds)"),
                                ("report", cmd_report, "offline study report page")):
        p = sub.add_parser(command, help=what)
        p.add_argument("name")
        p.add_argument("--out", help="HTML file (default: results/<name>/%s.html)" % command)
        p.add_argument("--results", default=RESULTS_DIR)
        p.set_defaults(func=func)

    p = sub.add_parser("export", help="write a trial as a records-style submission folder")
    p.add_argument("name")
    p.add_argument("--trial", type=INDEX, help="trial number (default: the best feasible trial)")
    p.add_argument("--out", required=True, help="submission folder to write")
    p.add_argument("--force", action="store_true", help="export an infeasible trial anyway")
    p.add_argument("--replace", action="store_true", help="replace an existing output folder")
    p.add_argument("--skip-legality", action="store_true", help="do not run the legality check (search verify --legality) first")
    p.add_argument("--results", default=RESULTS_DIR)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="re-score an exported submission in a fresh process without network")
    p.add_argument("dir")
    p.add_argument("--data", help="data root or shard folder (default: the data the trial was scored on)")
    p.add_argument("--tokenizer", help="SentencePiece .model for the shards (default: found under --data; without --data, the recorded one)")
    p.add_argument("--tolerance", type=SECONDS, help="allowed bpb difference (default: exact; with --run, 3 x the seed spread "
                   "the study measured, 0.005 where it measured none)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--legality", action="store_true",
                      help="instead, measure the four legality conditions on the export's own evaluation (exit 1 on a failure)")
    mode.add_argument("--run", action="store_true", help="also train it from scratch as its README launches it, in a temporary "
                      "folder, and compare the score with the trial's (see --tolerance)")
    p.add_argument("--device")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("confirm", help="retrain a trial with new seeds; t-test against a reference")
    p.add_argument("name")
    p.add_argument("--trial", type=INDEX, help="trial number (default: the best feasible trial)")
    p.add_argument("--seeds", type=COUNT, default=3, help="new seeds (default: %(default)s)")
    p.add_argument("--reference", type=POSITIVE, help="reference bpb (default: the study's baseline trial)")
    p.add_argument("--same-steps", action="store_true",
                   help="train exactly the trial's step count with no wallclock cap, so a busy machine trains the same model")
    p.add_argument("--ranks", type=COUNT, help="run each seed under torchrun with N ranks on this machine "
                   "(N GPUs with --device cuda, gloo processes on the CPU; 8 on an 8-GPU node as the challenge runs; "
                   "default: 1, a script study's [script] ranks)")
    p.add_argument("--device")
    p.add_argument("--results", default=RESULTS_DIR)
    p.set_defaults(func=cmd_confirm)

    p = sub.add_parser("allocate", help="choose bits / clip / eval settings for one checkpoint under a byte cap")
    p.add_argument("checkpoint", help="checkpoint.pgolf, a folder holding one, or an official final_model.pt / .int8.ptz")
    p.add_argument("--cap", type=COUNT, required=True, help="artifact byte cap (code + compressed model)")
    p.add_argument("--out", help="output folder (default: allocation-<cap>)")
    p.add_argument("--data", default=default_data_root())
    p.add_argument("--tokenizer")
    p.add_argument("--seq-len", type=COUNT, default=1024, help="sequence length for official files (default: %(default)s)")
    p.add_argument("--bits", help="allowed widths for block matrices, e.g. 4,5,6,8")
    p.add_argument("--embedding-bits", help="allowed widths for the embedding, e.g. 6,8,16")
    p.add_argument("--clip", help="clip multipliers to try, e.g. 8,12.85,20")
    p.add_argument("--strides", help="eval strides to consider, e.g. 0,64 (0 = chunks)")
    p.add_argument("--repeats", help="eval unroll counts to consider (models with a shared segment)")
    p.add_argument("--granularity", choices=GRANULARITIES)
    p.add_argument("--compressors", help="compressors to pack with, e.g. zstd,lzma,rans (default: every one installed)")
    p.add_argument("--row-orders", help="MLP unit orders to pack with: off, similar or both (default: both)")
    p.add_argument("--code", choices=CODE_FORMS, default="plain",
                   help="count train_gpt.py plain or in its self-extracting form (default: %(default)s)")
    for axis in FORMAT_AXES:  # the matrix formats' axes, each a list to choose from (GPTQ/AWQ/ranks calibrate on training tokens)
        offered = f" (default: {','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in axis.offered)})" if axis.per_tensor else ""
        p.add_argument(format_flag(axis), type=None if axis.per_tensor else axis.kind, help=axis.help + offered)
    p.add_argument("--sensitivity", choices=SENSITIVITY_METHODS,
                   help="each unit's loss increase: measured, one forward per unit (default), or a diagonal-Fisher estimate "
                        "from one backward pass")
    p.add_argument("--eval-seconds", type=POSITIVE, default=600.0, help="eval-time cap (default: %(default)s)")
    p.add_argument("--device")
    p.add_argument("--replace", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_allocate)

    p = sub.add_parser("script-info", help="the environment variables a training script reads: type, default, line")
    p.add_argument("path", help="a records-style train_gpt.py (read, never run)")
    p.set_defaults(func=cmd_script_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Relative paths mean the working directory now, also for the study that stores them and every later command.
    absolute_paths(args, ("results", "data", "out", "tokenizer", "checkpoint", "dir", "path"))
    if getattr(args, "storage", None):
        args.storage = absolute_storage(args.storage)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return pgolf_cli.dispatch("search", args, USER_ERRORS)  # a study's coordinator names its own resume command


def entry() -> None:
    """The console script and `python -m search.cli` (pgolf/cli.py's entry: no interpreter teardown after the command)."""
    pgolf_cli.exit_after_cleanup(main())


if __name__ == "__main__":
    entry()
