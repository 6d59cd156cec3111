"""`search verify DIR`: re-score an exported submission the way a reviewer would.

Runs the folder's own train_gpt.py in eval-only mode, in a fresh Python process whose sockets cannot
connect (the challenge allows no network during evaluation), and checks: the counted files are within
the cap and match the recorded byte total; the model file loads (a truncated or altered one is rejected
by the loader); the printed bpb equals the recorded one on the same data.
"""

import json
import os
import re
import subprocess
import sys

from pgolf.datasets import DataPaths, resolve_data
from search.export import COUNTED_FILES, SOURCE_FILE
from search.study import StudyError

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


class VerifyError(ValueError):
    """The submission does not verify; the message says which check failed."""


def verify(folder: str, data_root: str | None = None, tolerance: float = 0.0, device: str | None = None) -> dict:
    for name in COUNTED_FILES + ("submission.json", SOURCE_FILE):
        if not os.path.exists(os.path.join(folder, name)):
            raise VerifyError(f"{folder} is not an exported submission: {name} is missing")
    with open(os.path.join(folder, SOURCE_FILE), encoding="utf-8") as f:
        source = json.load(f)
    with open(os.path.join(folder, "submission.json"), encoding="utf-8") as f:
        submission = json.load(f)
    counted = sum(os.path.getsize(os.path.join(folder, name)) for name in COUNTED_FILES)
    report = {"counted_bytes": counted, "cap_bytes": source["cap_bytes"], "recorded_bpb": source["val_bpb_exact"]}
    if counted != submission["bytes_total"]:
        raise VerifyError(f"counted files hold {counted:,} bytes but submission.json says {submission['bytes_total']:,}")
    if counted > source["cap_bytes"]:
        raise VerifyError(f"counted files hold {counted:,} bytes, over the {source['cap_bytes']:,}-byte cap")
    data = DataPaths(**source["data"])
    if data_root:
        data = resolve_data(data_root, data.vocab_size)
    env = dict(os.environ, EVAL_ONLY="1", MODEL_PATH=os.path.abspath(os.path.join(folder, COUNTED_FILES[1])),
               DATA_PATH=os.path.dirname(data.val_pattern), TOKENIZER_PATH=data.tokenizer,
               HF_HUB_OFFLINE="1", PYTHONPATH="")
    if device:
        env["DEVICE"] = device
    result = subprocess.run([sys.executable, "-c", NO_NETWORK_RUNNER, os.path.abspath(os.path.join(folder, COUNTED_FILES[0]))],
                            cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()[-1]
        raise VerifyError(f"train_gpt.py failed to score the model: {last}")
    found = re.search(r"final_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)", result.stdout)
    if not found:
        raise VerifyError("train_gpt.py did not print a final_roundtrip_exact line")
    report.update(val_loss=float(found.group(1)), val_bpb=float(found.group(2)))
    report["difference"] = report["val_bpb"] - source["val_bpb_exact"]
    if abs(report["difference"]) > tolerance:
        raise VerifyError(f"bpb {report['val_bpb']!r} differs from the recorded {source['val_bpb_exact']!r} "
                          f"by {report['difference']:.3e} (tolerance {tolerance:g})")
    return report
