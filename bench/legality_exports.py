"""The legality check on real exports: the best trial of a plain study and of a study that chose TTT, each
exported (`search export`, which runs the check), then `search verify --legality` on each and on two
deliberately broken copies (the TTT export patched to adapt before scoring, the plain one patched to skip
the split's last evaluation sequence or sliding window); with --tilt-study, also an export that uses the token
n-gram tilt (e.g. a study of bench/spaces/micro_tilt.toml) and copies patched to tilt with the target itself and to read later text. Prints each folder's condition lines, the exit code and the seconds.

    python bench/legality_exports.py PLAIN_STUDY TTT_STUDY [--ttt-trial N] [--tilt-study NAME] [--results bench/out/results]
                                     [--out bench/out/legality]
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.broken_evals import ADAPT_THEN_SCORE, SKIPPED_LAST_WINDOW, SKIPPED_TAIL, TILT_FROM_FUTURE, TILT_WITH_TARGET, patched  # noqa: E402


def search(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=ROOT, capture_output=True, text=True)


def broken_copy(source: str, folder: str, *patches: tuple[str, str]) -> str:
    shutil.copytree(source, folder)
    script = os.path.join(folder, "train_gpt.py")
    with open(script, encoding="utf-8") as f:
        text = f.read()
    for patch in patches:
        text = patched(text, patch)
    with open(script, "w", encoding="utf-8") as f:
        f.write(text)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plain_study")
    parser.add_argument("ttt_study")
    parser.add_argument("--plain-trial", type=int, help="default: the plain study's best feasible trial")
    parser.add_argument("--ttt-trial", type=int, help="a trial that chose TTT (default: the TTT study's best feasible trial)")
    parser.add_argument("--tilt-study", help="a study whose trials evaluate with the n-gram tilt")
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "out", "results"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "legality"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    folders = {}
    studies = [("plain", args.plain_study, args.plain_trial), ("ttt", args.ttt_study, args.ttt_trial)]
    for label, study, trial in studies + ([("tilt", args.tilt_study, None)] if args.tilt_study else []):
        folders[label] = os.path.join(args.out, label)
        which = [] if trial is None else ["--trial", str(trial)]
        done = search("export", study, *which, "--out", folders[label], "--results", args.results)
        if done.returncode:
            sys.exit(f"export of {study} failed: {done.stderr.strip().splitlines()[-1:]}")
    folders["ttt, adapt then score"] = broken_copy(folders["ttt"], os.path.join(args.out, "ttt-adapt-first"), ADAPT_THEN_SCORE)
    folders["plain, tail skipped"] = broken_copy(folders["plain"], os.path.join(args.out, "plain-skipped-tail"),
                                                 SKIPPED_TAIL, SKIPPED_LAST_WINDOW)  # whichever path the export scores with
    if args.tilt_study:
        folders["tilt, boosts the target"] = broken_copy(folders["tilt"], os.path.join(args.out, "tilt-target"), TILT_WITH_TARGET)
        folders["tilt, reads later text"] = broken_copy(folders["tilt"], os.path.join(args.out, "tilt-future"), TILT_FROM_FUTURE)
    for label, folder in folders.items():
        started = time.perf_counter()
        done = search("verify", "--legality", folder)
        print(f"== {label}: exit {done.returncode}, {time.perf_counter() - started:.1f} s")
        print(done.stdout.strip() or done.stderr.strip(), flush=True)


if __name__ == "__main__":
    main()
