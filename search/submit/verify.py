"""`search verify DIR`: re-score an exported submission the way a reviewer would.

Checks, in order: the counted files (train_gpt.py + final_model.pgolf) are within the cap; train_gpt.py holds
the code bytes the export recorded and, compressed, is the self-extracting form of train_gpt_source.py; the model
file is the one a score was recorded for (its SHA-256 matches the export's record, or the record a
training run of the script wrote beside it); the folder's own train_gpt.py, run in eval-only mode in a
fresh Python process whose sockets cannot connect (no network during evaluation), loads the model
(a truncated or altered file is rejected by its loader) and prints exactly the recorded bpb.
"""

import hashlib
import math
import os
import re
import subprocess
import sys

from pgolf.datasets import DataPaths, resolve_data
from pgolf.files import read_json
from pgolf.submission import RESULT_SUFFIX
from search.submit.files import COUNTED_FILES, MODEL_FILE, SCRIPT_FILE, SOURCE_FILE, VerifyError  # VerifyError: importable from here too
from search.submit.provenance import check_data_folders, shard_folder

# Runs the script as __main__ with every socket connection refused.
NO_NETWORK_RUNNER = (
    "import runpy, socket, sys\n"
    "def refuse(*a, **k):\n"
    "    raise OSError('network access is not allowed during evaluation')\n"
    "socket.socket.connect = refuse\n"
    "socket.socket.connect_ex = refuse\n"
    "socket.create_connection = refuse\n"
    "sys.argv = [sys.argv[1]]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def _recorded_bpb(value, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise VerifyError(f"{path} records val_bpb {value!r}: not a score to verify against")
    return float(value)


def recorded_score(folder: str, source: dict) -> tuple[float, str]:
    """(bpb recorded for the model file as it is now, where that record came from)."""
    with open(os.path.join(folder, MODEL_FILE), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    retrained = os.path.join(folder, MODEL_FILE + RESULT_SUFFIX)
    if os.path.exists(retrained):
        record = read_json(retrained, "training result")
        if record.get("model_sha256") == digest:
            return _recorded_bpb(record.get("val_bpb"), retrained), "the training run that wrote it"
    if source.get("model_sha256") == digest:
        return (_recorded_bpb(source.get("val_bpb_exact"), os.path.join(folder, SOURCE_FILE)),
                f"trial {source.get('trial')} of study {source.get('study')}")
    raise VerifyError(f"{MODEL_FILE} matches no recorded score: it was altered or truncated after it was written")


def export_data(folder: str, data_root: str | None = None, tokenizer: str | None = None) -> DataPaths:
    """The data an export was scored on, or the given data root / tokenizer instead."""
    for name in COUNTED_FILES + ("submission.json", SOURCE_FILE):
        if not os.path.exists(os.path.join(folder, name)):
            raise VerifyError(f"{folder} is not an exported submission: {name} is missing")
    source_path = os.path.join(folder, SOURCE_FILE)
    try:
        data = DataPaths(**read_json(source_path, "export record")["data"])
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"{source_path} is not the record of a pgolf export ({type(exc).__name__}: {exc})") from None
    if data_root or tokenizer:
        data = resolve_data(data_root or os.path.dirname(data.val_pattern), data.vocab_size, tokenizer)
    return data


def run_eval_only(folder: str, data: DataPaths, device: str | None = None, env: dict | None = None,
                  task: str = "score the model") -> subprocess.CompletedProcess:
    """The folder's own train_gpt.py in eval-only mode, in a fresh process whose sockets cannot connect."""
    env = dict(os.environ, EVAL_ONLY="1", MODEL_PATH=os.path.abspath(os.path.join(folder, MODEL_FILE)),
               DATA_PATH=os.path.dirname(data.val_pattern), TOKENIZER_PATH=data.tokenizer, HF_HUB_OFFLINE="1", PYTHONPATH="",
               **(env or {}))
    if device:
        env["DEVICE"] = device
    result = subprocess.run([sys.executable, "-c", NO_NETWORK_RUNNER, os.path.abspath(os.path.join(folder, SCRIPT_FILE))],
                            cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()[-1]
        raise VerifyError(f"train_gpt.py failed to {task}: {last}")
    return result


def check_code(folder: str, source: dict) -> None:
    """train_gpt.py is the code the trial counted: its recorded bytes, and (compressed) exactly what the readable script
    beside it builds to, so what runs is what a reader reads. Exports from before these records carry neither."""
    script = os.path.join(folder, SCRIPT_FILE)
    if source.get("code_bytes") is not None and os.path.getsize(script) != source["code_bytes"]:
        raise VerifyError(f"{SCRIPT_FILE} holds {os.path.getsize(script):,} bytes, not the {source['code_bytes']:,} "
                          f"the trial counted: it was changed after export")
    if source.get("code_form") == "compressed":
        from pgolf.assemble import READABLE_FILE
        from pgolf.selfextract import SelfExtractError, build_source

        readable = os.path.join(folder, READABLE_FILE)
        if not os.path.isfile(readable):
            raise VerifyError(f"{READABLE_FILE} is missing: the readable source of the compressed {SCRIPT_FILE}")
        with open(readable, encoding="utf-8") as f, open(script, encoding="utf-8") as g:
            try:
                same = build_source(f.read(), SCRIPT_FILE).loader == g.read()
            except SelfExtractError as exc:
                raise VerifyError(f"{READABLE_FILE}: {exc}") from None
        if not same:
            raise VerifyError(f"{SCRIPT_FILE} is not the self-extracting form of {READABLE_FILE}")


def verify(folder: str, data_root: str | None = None, tolerance: float = 0.0, device: str | None = None,
           tokenizer: str | None = None) -> dict:
    """`data_root` and `tokenizer` replace the data the export recorded (a data root, or a shard folder + its tokenizer)."""
    record_path = os.path.join(folder, SOURCE_FILE)
    if os.path.isfile(record_path) and read_json(record_path, "export record").get("kind") == "script":
        from search.script.export import verify_script_export  # a script study's export

        return verify_script_export(folder, read_json(record_path, "export record"))
    data = export_data(folder, data_root, tokenizer)
    source_path = os.path.join(folder, SOURCE_FILE)
    source = read_json(source_path, "export record")
    try:
        cap = int(source["cap_bytes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"{source_path} is not the record of a pgolf export ({type(exc).__name__}: {exc})") from None
    counted = sum(os.path.getsize(os.path.join(folder, name)) for name in COUNTED_FILES)
    if counted > cap:
        raise VerifyError(f"counted files hold {counted:,} bytes, over the {cap:,}-byte cap")
    check_code(folder, source)
    expected, origin = recorded_score(folder, source)
    check_data_folders([shard_folder(data.val_pattern)])  # a validation document in the training shards: refused
    result = run_eval_only(folder, data, device)
    found = re.search(r"final_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)", result.stdout)
    if not found:
        raise VerifyError("train_gpt.py did not print a final_roundtrip_exact line")
    bpb = float(found.group(2))
    if not math.isfinite(bpb):  # a script exported before evaluation refused non-finite scores prints them
        raise VerifyError(f"train_gpt.py scored val_bpb {bpb}: the model's outputs are not finite")
    report = {"counted_bytes": counted, "cap_bytes": cap, "recorded_bpb": expected, "origin": origin,
              "val_loss": float(found.group(1)), "val_bpb": bpb, "difference": bpb - expected}
    if abs(report["difference"]) > tolerance:
        raise VerifyError(f"bpb {bpb!r} differs from the {expected!r} recorded by {origin} "
                          f"by {report['difference']:.3e} (tolerance {tolerance:g})")
    return report
