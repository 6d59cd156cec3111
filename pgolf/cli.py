"""`pgolf`: run one config end to end, re-score a saved artifact, get data."""

import argparse
import atexit
import math
import os
import select
import signal
import sys
import threading
import time
import tomllib

from pgolf.artifact import ArtifactError
from pgolf.bpb import TokenizerError
from pgolf.cliargs import COUNT, INDEX, OneLineParser, absolute_paths, ranged
from pgolf.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from pgolf.configfiles import resolve_config, shipped_configs
from pgolf.datasets import DataError, DataPaths, default_data_root, resolve_data
from pgolf.evaluate import NonFiniteScore
from pgolf.files import FileFormatError, read_json
from pgolf.gptq import CalibrationError
from pgolf.official import CheckpointImportError
from pgolf.provenance import ProvenanceError
from pgolf.shards import ShardError
from pgolf.staging import Interrupted, OutputExists
from pgolf.submission import DeviceError, exit_process
from pgolf.train import TrainingDiverged

# Errors whose message names the problem: one line on stderr and a non-zero exit, no traceback.
USER_ERRORS = (ArtifactError, CalibrationError, CheckpointImportError, ConfigError, DataError, ProvenanceError, ShardError, TokenizerError,
               TrainingDiverged, OutputExists, FileNotFoundError, NotADirectoryError, PermissionError, FileFormatError, NonFiniteScore,
               DeviceError)


def apply_overrides(config, overrides: list[str]):
    """`section.key=value` overrides (value in TOML syntax) on top of a config, re-validated."""
    data = config_to_dict(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} is not section.key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word is a string
        if section not in data:
            raise ConfigError(f"unknown config section [{section}] in override {item!r}")
        data[section][name] = value
    return config_from_dict(data)


def eval_overrides(model_cfg, evaluation, overrides: list[str]):
    """`eval.key=value` overrides on a model's eval settings (re-scoring an artifact with or without TTT, say)."""
    for item in overrides:
        if not item.strip().startswith("eval."):
            raise ConfigError(f"override {item!r}: only eval.* keys change how a stored model is scored")
    return apply_overrides(RunConfig(model=model_cfg, eval=evaluation), overrides).eval if overrides else evaluation


def cmd_run(args) -> int:
    from pgolf.run import run

    config = apply_overrides(resolve_config(args.config), args.set)
    data = resolve_data(args.data, config.model.vocab_size, args.tokenizer)
    name = os.path.splitext(os.path.basename(args.config))[0]
    out = args.out or os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run(config, data, out, device=args.device, force=args.force)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 wrote it
        print(f"wrote {out}")
    return 0


TRIAL_REQUEST = "request.json"  # what search's coordinator hands a trial's worker (search/backends/process.py)


def recorded_run(out: str) -> tuple[dict, DataPaths]:
    """(metrics, data paths) a run folder recorded, refusing a folder or metrics.json that is not a run's. A
    search trial's folder qualifies too: its data paths are in the request the worker was given."""
    from pgolf.run import METRICS_FILE, read_metrics

    path = os.path.join(out, METRICS_FILE)
    recorded = read_metrics(out)
    request = os.path.join(out, TRIAL_REQUEST)
    try:
        int(recorded["config"]["model"]["vocab_size"])
        if "data" not in recorded and os.path.isfile(request):
            data = DataPaths(**read_json(request, "trial request")["data"])
        else:
            data = DataPaths(**recorded["data"])
        bpb = float(recorded["val_bpb_post"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(f"{path} is not the metrics of a pgolf run ({type(exc).__name__}: {exc})") from None
    if not math.isfinite(bpb):
        raise FileFormatError(f"{path} records val_bpb_post {bpb}: not a score to reproduce")
    return recorded, data


def cmd_eval(args) -> int:
    from pgolf.run import rescore
    from pgolf.submission import setup_runtime

    recorded, data = recorded_run(args.out)
    if args.data or args.tokenizer:
        data = resolve_data(args.data or default_data_root(), recorded["config"]["model"]["vocab_size"], args.tokenizer)
    result = rescore(args.out, data, setup_runtime(args.device), lambda model_cfg, evaluation: eval_overrides(model_cfg, evaluation, args.set))
    same = result["val_bpb_post"] == recorded["val_bpb_post"]
    against = ("with " + ", ".join(args.set) + ": " if args.set else "") + (
        "identical" if same else "differs by %.2e" % (result["val_bpb_post"] - recorded["val_bpb_post"]))
    print(f"val_bpb {result['val_bpb_post']:.8f} (recorded {recorded['val_bpb_post']:.8f}; {against}) "
          f"val_loss {result['val_loss_post']:.8f} eval {result['eval_seconds']:.1f}s")
    return 0


def cmd_data_build(args) -> int:
    paths = resolve_data(args.data, args.vocab, args.tokenizer)
    print(paths.describe())
    return 0


def cmd_data_fetch(args) -> int:
    from pgolf.fetch import fetch_official

    fetch_official(args.dir, args.variant, args.train_shards, args.repo)
    return 0


def cmd_data_check(args) -> int:
    from pgolf.provenance import check_split, dataset_dirs, tokenizer_for

    refusals = []
    for folder in dataset_dirs(args.dir):
        report = check_split(folder, args.expect_docs, args.expect_tokens, tokenizer_for(args.dir, folder))
        print(report.summary())
        if report.refusal():
            refusals.append(report.refusal())
    if refusals:
        raise ProvenanceError(refusals[0])
    return 0


def cmd_import(args) -> int:
    from pgolf.checkpoint import CHECKPOINT_FILE, save_checkpoint
    from pgolf.configfiles import config_to_toml
    from pgolf.model import GPT
    from pgolf.official import import_official
    from pgolf.staging import staged_dir

    state, config, kind = import_official(args.checkpoint, args.seq_len)
    model = GPT(config.model)
    model.load_state_dict(state, strict=True)
    with staged_dir(args.out, replace=args.force) as stage:
        save_checkpoint(model, config, os.path.join(stage, CHECKPOINT_FILE))
        with open(os.path.join(stage, "config.toml"), "w", encoding="utf-8") as f:
            f.write(config_to_toml(config))
    m = config.model
    print(f"imported {args.checkpoint} ({kind}): {m.num_layers} layers x {m.model_dim}, {m.num_heads} heads / "
          f"{m.num_kv_heads} KV, MLP {m.mlp_mult:g}x, vocab {m.vocab_size}, {'tied' if m.tie_embeddings else 'untied'} "
          f"-> {os.path.join(args.out, CHECKPOINT_FILE)}")
    return 0


def cmd_score(args) -> int:
    from pgolf.checkpoint import load_any_checkpoint
    from pgolf.model import full_precision
    from pgolf.submission import score, setup_runtime

    runtime = setup_runtime(args.device)
    model, config = load_any_checkpoint(args.path, args.seq_len)
    evaluation = config.resolved_eval()
    if args.precision == "fp32":
        model = full_precision(model)
        evaluation.autocast = False
    if args.stride is not None:
        evaluation.stride = args.stride
    evaluation = eval_overrides(config.model, evaluation, args.set)
    data = resolve_data(args.data, config.model.vocab_size, args.tokenizer)
    result = score(model.to(runtime.device), evaluation, data.val_pattern, data.tokenizer, runtime)
    print(f"val_loss {result.loss:.8f} val_bpb {result.bpb:.8f} ({result.tokens:,} tokens, {result.bytes:,} bytes, "
          f"{args.precision} precision, {result.seconds:.1f}s)")
    print(f"exact val_loss {result.loss!r} val_bpb {result.bpb!r}")
    return 0


def cmd_configs(args) -> int:
    for name in shipped_configs():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="pgolf", description="Train, round-trip and score one Parameter Golf model.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train a config, write its artifact and metrics")
    p.add_argument("config", help="a TOML file or a shipped config name (see `pgolf configs`)")
    p.add_argument("--data", default=default_data_root(), help="data root or shard folder (default: %(default)s)")
    p.add_argument("--tokenizer", help="SentencePiece .model for the shards (default: found under --data)")
    p.add_argument("--out", help="output folder (default: runs/<config>-<time>)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="re-score a saved artifact in this (fresh) process")
    p.add_argument("out", help="a folder written by `pgolf run`")
    p.add_argument("--data", help="data root (default: the paths recorded in metrics.json)")
    p.add_argument("--tokenizer")
    p.add_argument("--device")
    p.add_argument("--set", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="score with other eval settings, e.g. eval.ttt=lora (default: the model file's)")
    p.set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="get or build token shards").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("fetch", help="download the official FineWeb shards and tokenizer (needs internet)")
    p.add_argument("--dir", default="data", help="where to put them (challenge layout; default: %(default)s)")
    p.add_argument("--variant", default="sp1024")
    p.add_argument("--train-shards", type=COUNT, default=1)
    p.add_argument("--repo", default="willdepueoai/parameter-golf")
    p.set_defaults(func=cmd_data_fetch)
    p = data.add_parser("build", help="train a tokenizer of a vocab size and build its shards (cached)")
    p.add_argument("--vocab", type=ranged(int, low=2), required=True)
    p.add_argument("--data", default=default_data_root())
    p.add_argument("--tokenizer")
    p.set_defaults(func=cmd_data_build)
    p = data.add_parser("check", help="provenance: no validation document in the training shards; validation split of the expected size")
    p.add_argument("dir", nargs="?", default=default_data_root(), help="data root or shard folder (default: %(default)s)")
    p.add_argument("--expect-docs", type=COUNT, help="validation documents expected (default: known splits' own counts)")
    p.add_argument("--expect-tokens", type=COUNT, help="validation tokens expected (default: known splits' own counts)")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("import", help="read an official train_gpt.py checkpoint (final_model.pt or .int8.ptz)")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="folder for the pgolf checkpoint and its config")
    p.add_argument("--seq-len", type=COUNT, default=1024, help="the run's TRAIN_SEQ_LEN (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("score", help="val bpb of a float checkpoint (pgolf or official) as the official eval computes it")
    p.add_argument("path", help="checkpoint.pgolf, a folder holding one, or an official final_model.pt / .int8.ptz")
    p.add_argument("--precision", choices=("official", "fp32"), default="official",
                   help="official: bf16 embedding, fp32 weights, bf16 autocast; fp32: all fp32, no autocast")
    p.add_argument("--seq-len", type=COUNT, default=1024, help="sequence length for official files (default: %(default)s)")
    p.add_argument("--stride", type=INDEX, help="sliding-window stride, 0 = chunks (default: the checkpoint's eval setting)")
    p.add_argument("--set", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="another eval setting, e.g. eval.ttt=lora eval.ttt_chunk=64 (test-time training)")
    p.add_argument("--data", default=default_data_root())
    p.add_argument("--tokenizer")
    p.add_argument("--device")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=cmd_configs)
    return parser


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _redeliver_swallowed(unraisable) -> None:
    """sys.unraisablehook: Python prints and drops an exception raised inside a callback (a weakref's, an
    import lock's, a __del__), so a signal handled there would be lost and the command would run on. Send
    the signal again: its handler then raises in ordinary code."""
    if isinstance(unraisable.exc_value, Interrupted):
        os.kill(os.getpid(), unraisable.exc_value.signum)
    else:
        sys.__unraisablehook__(unraisable)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (poll reports an error on its writing end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fd (captured), or no poll on this platform
        return False


def dispatch(prog: str, args, errors: tuple = USER_ERRORS) -> int:
    """Run a parsed subcommand; a user error is one line on stderr and exit 1; Ctrl-C exits 130, SIGTERM 143."""
    # SIGTERM (`kill`, a scheduler stopping a job) would end Python on the spot, leaving staging folders behind;
    # as an exception it unwinds like Ctrl-C, so nothing half-written stays.
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver_swallowed
    try:
        return args.func(args)
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        if not stdout_reader_gone():  # some other pipe: a real failure
            raise
        # `search status | head`: the reader has what it wanted. As a Unix tool killed by SIGPIPE: no message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's last flush must not raise again
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as exc:
        stopped = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        # On a terminal, start a fresh line after the echoed ^C; in a log, just the one line.
        print(("\n" if sys.stderr.isatty() else "") + f"{prog}: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    absolute_paths(args, ("data", "tokenizer", "out", "dir", "checkpoint", "path"))  # what is recorded means the same from anywhere
    code = dispatch("pgolf", args)
    if "RANK" in os.environ and argv is None:  # a rank of `torchrun -m pgolf.cli run ...`
        exit_process(code)
    return code


def exit_after_cleanup(code: int) -> None:
    """End a command as the interpreter would, less its teardown: other non-daemon threads joined, the atexit handlers
    run (Ray's shutdown, logging's flush), output flushed, then the process ends. The teardown of torch and the
    imported modules took 0.5-0.9 s of every command on the AMD machines, after everything was written."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # CPython's own call at exit, before the teardown this skips
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`search status | head`) or stream: nothing more can be said
            pass
    os._exit(code)


def entry() -> None:
    """The console script and `python -m pgolf.cli`: main() run, then exit_after_cleanup. An argparse error or an
    uncaught exception leaves as usual (SystemExit or a traceback)."""
    exit_after_cleanup(main())


if __name__ == "__main__":
    entry()
