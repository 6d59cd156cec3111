"""`search verify --run DIR`: train an exported folder from scratch, as its README launches it, and compare the score
with the trial's.

The folder is copied into a temporary working folder, its model file left out (the score must be of the model this
run writes), and its train_gpt.py launched there: an engine export with the data the trial was scored on
(DATA_PATH, TOKENIZER_PATH; --data / --tokenizer replace them); a script export with its README's launch command
(its variables; python, or torchrun with the study's ranks; the study's interpreter) and the training cap the study
trained under in the script's wallclock variable. The output is read as a script trial's (search/script/run.py):
the post-roundtrip score line, the artifact it wrote, whose bytes with the code's must fit the cap.

Two runs of one seed can differ (nondeterministic kernels; the steps a wallclock cap lets a busy machine train), so
the run passes within SPREAD_FACTOR x the seed spread the study measured, recorded at export
(search/budget/reruns.py seed_spread: the trial's configuration over its seeds, else pooled over the study's re-run
configurations). A study that ran no configuration on two seeds measured no spread: NO_SPREAD_TOLERANCE then.
--tolerance replaces either.
"""

import os
import shutil
import sys
import tempfile

from pgolf.submission import RESULT_SUFFIX
from search.submit.files import MODEL_FILE, SCRIPT_FILE, VerifyError

SPREAD_FACTOR = 3.0  # a run of the trial's own seed within 3 standard deviations of a seed's score
NO_SPREAD_TOLERANCE = 0.005  # bpb: about the records' 3-seed spread at 8xH100 (std ~0.001) x 3, rounded up


def tolerance_of(record: dict, given: float | None) -> tuple[float, str]:
    """(the allowed bpb difference, where it comes from)."""
    if given is not None:
        return given, "--tolerance"
    spread = record.get("seed_spread") or {}
    if spread.get("std"):
        return SPREAD_FACTOR * spread["std"], f"{SPREAD_FACTOR:g} x seed std {spread['std']:.5f} ({spread['of']}, {spread['seeds']} seeds)"
    return NO_SPREAD_TOLERANCE, f"no seed spread measured ({spread.get('of', 'an export without one')}): the default {NO_SPREAD_TOLERANCE:g}"


def _launch(folder: str, record: dict, data_root: str | None, tokenizer: str | None, device: str | None) -> dict:
    """The command, environment, final line, artifact and time limit of the export's own launch."""
    if record.get("kind") == "script":
        from search.script.export import launch_command
        from search.script.run import script_command

        if data_root or tokenizer or device:
            raise VerifyError("--data, --tokenizer, --device: a script export runs with its launch command's own variables")
        run = record.get("run") or {}
        env = {**record.get("launch", {}), **run.get("train_cap", {})}
        return {"command": script_command(SCRIPT_FILE, record.get("ranks", 1), run.get("interpreter") or None), "env": env,
                "shown": launch_command(env, record.get("ranks", 1)), "final_tag": run.get("final_tag") or None,
                "artifact": record["artifact"], "time_limit": run.get("time_limit")}
    from search.submit.verify import export_data

    data = export_data(folder, data_root, tokenizer)
    env = {"DATA_PATH": os.path.dirname(data.val_pattern), "TOKENIZER_PATH": data.tokenizer, **({"DEVICE": device} if device else {})}
    return {"command": [sys.executable, SCRIPT_FILE], "env": env, "shown": f"DATA_PATH=... TOKENIZER_PATH=... python {SCRIPT_FILE}",
            "final_tag": "final_roundtrip", "artifact": MODEL_FILE, "time_limit": None}


def _code_bytes(folder: str, record: dict) -> int:
    counted = [SCRIPT_FILE, *record.get("counted", [])] if record.get("kind") == "script" else [SCRIPT_FILE]
    return sum(os.path.getsize(os.path.join(folder, name)) for name in counted)


def run_from_scratch(folder: str, record: dict, tolerance: float | None = None, data_root: str | None = None,
                     tokenizer: str | None = None, device: str | None = None, log=print) -> dict:
    """Train `folder`'s script from scratch in a temporary folder; VerifyError (one line) unless it writes an
    artifact within the cap and scores within the tolerance of the trial's val_bpb."""
    from search.script.run import run_script

    launch = _launch(folder, record, data_root, tokenizer, device)
    allowed, why = tolerance_of(record, tolerance)
    expected = record["val_bpb_exact"]
    work = tempfile.mkdtemp(prefix="pgolf-verify-run-")
    try:
        copy = os.path.join(work, "run")
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(launch["artifact"], MODEL_FILE + RESULT_SUFFIX, "train.log"))
        log(f"running {launch['shown']} in {copy} (its log: train.log there while it runs)")
        run = run_script(launch["command"], copy, launch["env"], os.path.join(copy, "train.log"), final_tag=launch["final_tag"],
                         artifact_glob=launch["artifact"], time_limit=launch["time_limit"])
        if run.outcome != "completed":
            last = run.tail[-1][:160] if run.tail else "-"
            raise VerifyError(f"the exported script, run from scratch, {run.outcome}: {run.reason} (its last line: {last})")
        total = _code_bytes(copy, record) + run.artifact_bytes
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bpb = run.summary.score()
    report = {"val_bpb": bpb, "recorded_bpb": expected, "difference": bpb - expected, "tolerance": allowed, "tolerance_source": why,
              "bytes": total, "cap_bytes": record["cap_bytes"], "train_seconds": run.summary.train_seconds, "command": launch["shown"]}
    if total > record["cap_bytes"]:
        raise VerifyError(f"the exported script, run from scratch, wrote {total:,} counted bytes, over the {record['cap_bytes']:,}-byte cap")
    if abs(bpb - expected) > allowed:
        raise VerifyError(f"run from scratch, the exported script scores val_bpb {bpb!r}, {bpb - expected:+.5f} from the trial's "
                          f"{expected!r}: beyond the tolerance {allowed:.5f} ({why})")
    report["line"] = (f"ran {folder} from scratch ({launch['shown']}): val_bpb {bpb!r} against the trial's {expected!r} "
                      f"(difference {bpb - expected:+.2e}, within {allowed:.5f}: {why}); {total:,} bytes <= cap {record['cap_bytes']:,}")
    return report
