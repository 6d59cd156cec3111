"""`search`: run, resume and inspect studies; Pareto fronts, reports, export, verify, confirm, allocate."""

import argparse
import os
import sys
import time

from pgolf.artifact import ArtifactError
from pgolf.bpb import TokenizerError
from pgolf.config import ConfigError
from pgolf.datasets import DataError, default_data_root, resolve_data
from pgolf.shards import ShardError
from pgolf.staging import OutputExists
from pgolf.train import TrainingDiverged

from search.study import RESULTS_DIR, SAMPLERS, StudyError
from space.spec import SpaceError

USER_ERRORS = (ArtifactError, ConfigError, DataError, ShardError, TokenizerError, TrainingDiverged, OutputExists,
               SpaceError, StudyError, FileNotFoundError, NotADirectoryError, PermissionError)


def cmd_run(args) -> int:
    from search.runner import start_study

    start_study(args)
    return 0


def cmd_resume(args) -> int:
    from search.runner import resume_study

    resume_study(args)
    return 0


def cmd_status(args) -> int:
    from search.status import print_status

    print_status(args.name, args.results)
    return 0


def add_run_options(p, resume: bool) -> None:
    p.add_argument("--trials", type=int, help="total finished trials the study should reach" + ("" if resume else " (default: 10)"))
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--workers", type=int, help="trials running at once (default: 1)")
    p.add_argument("--backend", choices=("local", "ray"), help="where trials run (default: local processes)")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--device", help="device for trials: cpu, cuda (default: the space's run.device)")
    p.add_argument("--data", help="data root (default: the space's run.data, else PGOLF_DATA or ../shared/data)")
    p.add_argument("--results", default=RESULTS_DIR, help="folder holding studies (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search", description="Architecture and bit-allocation search for Parameter Golf.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start a study (no arguments: the demo preset on ../shared/data)")
    p.add_argument("--space", default="demo", help="a space file or preset: demo | challenge (default: %(default)s)")
    p.add_argument("--study", help="study name (default: <space>-<date>-<time>)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    p.add_argument("--sampler-seed", type=int, help="seed of the sampler (training seeds never vary)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"search: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsearch: interrupted; `search resume` continues the study", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
