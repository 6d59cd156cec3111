"""Export and verification of a script trial: the records folder of a user's script with the trial's settings.

    train_gpt.py         the script, its literal defaults replaced by the trial's values (search/script/defaults.py);
                         with code = "compressed", the self-extracting form of that copy (pgolf/selfextract.py)
    train_gpt_source.py  compressed code only: the readable copy train_gpt.py was built from
    <counted files>      as the study counted them
    <artifact>           the model file the trial's run wrote
    submission.json, README.md (the changed defaults, the exact launch command), train.log, pgolf.json (the record)
The counted bytes are measured again on the copy (a rewritten default changes them by a few bytes) and must
fit the cap. The trial's values baked in: its dimensions and the fixed variables that are not paths (a data
path is the reader's own: it goes into the launch command, as does every variable without a literal default).
"""

import hashlib
import json
import os
import shlex
import shutil
import time

from pgolf.files import read_json
from pgolf.metrics import METRICS_FILE
from pgolf.staging import staged_dir
from search.script import ScriptError
from search.script.defaults import rewrite_defaults
from search.script.knobs import CONVERTERS, env_value, read_knobs
from search.submit.files import SCRIPT_FILE, SOURCE_FILE, VerifyError

SCRIPT_NAME = SCRIPT_FILE  # the counted script, named as in an engine export
SOURCE_DIR = "source"  # compressed code: the readable files train_gpt.py was built from
RECORD_FILE = SOURCE_FILE  # the export record, where verify looks for its kind


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _baked_values(spec, metrics: dict) -> tuple[dict, dict]:
    """({variable: value} written into the copy's defaults, {variable: env string} left to the launch command)."""
    baked, launch = {}, {}
    for name, text in spec.env.items():
        (launch if os.path.isabs(text) else baked)[name] = text
    baked.update(metrics["script_values"])
    # The trial's seed is written in, so the copy trains the trial's model; the training cap stays the script's
    # own (a study may train under a shorter cap than the challenge's).
    baked.pop(spec.wallclock_var, None)
    if spec.seed_var and metrics.get("seed") is not None:
        baked[spec.seed_var] = metrics["seed"]
    return baked, launch


def launch_command(launch: dict, ranks: int) -> str:
    prefix = " ".join(f"{name}={shlex.quote(value)}" for name, value in launch.items())
    runner = f"torchrun --standalone --nproc_per_node={ranks}" if ranks > 1 else "python"
    return f"{prefix + ' ' if prefix else ''}{runner} {SCRIPT_NAME}"


def export_script_trial(directory: str, settings, trial, out: str, replace: bool = False, refusal: str | None = None,
                        log=lambda line: None, spread: dict | None = None, selection: dict | None = None) -> dict:
    """`spread`: the seed spread the study measured (search/budget/reruns.py seed_spread), for `search verify --run`;
    `selection`: how the study selected it (search/budget/selection.py), for the README and submission.json."""
    from search.budget.selection import selection_text
    from search.study import trial_dir
    from space.spec import space_from_dict

    source_dir = trial_dir(directory, trial.number)
    # Read whole: the script's own keys (script_env, script_sha256, artifact_file) are not RunMetrics fields.
    metrics = read_json(os.path.join(source_dir, METRICS_FILE), f"trial {trial.number}'s metrics")
    space = space_from_dict(settings.space, source=settings.space_source)
    spec = space.script
    if metrics.get("script_sha256") not in (None, _sha256(spec.path)):
        raise ScriptError(f"{spec.path} changed since trial {trial.number} ran it: its export would not be the trained script")
    with open(spec.path, encoding="utf-8") as f:
        original = f.read()
    baked, launch_vars = _baked_values(spec, metrics)
    rewritten, no_literal = rewrite_defaults(original, baked, spec.path)
    launch_vars.update(no_literal)
    artifact = os.path.join(source_dir, metrics["artifact_file"])
    if not os.path.isfile(artifact) or os.path.getsize(artifact) != metrics["model_bytes"]:
        raise ScriptError(f"trial {trial.number}'s artifact {metrics['artifact_file']} is missing or changed since the trial")
    from search.submit.provenance import check_data_folders  # the data folders the fixed variables name

    provenance = check_data_folders([v for v in metrics["script_env"].values() if os.path.isabs(v) and os.path.isdir(v)], log)
    with staged_dir(out, replace=replace, flag="--replace") as stage:
        # Compressed: the readable copy and its counted files go into source/, the loader built from them is
        # train_gpt.py, and only counted files the loader does not bundle (not Python modules) sit beside it.
        home = os.path.join(stage, SOURCE_DIR) if spec.code == "compressed" else stage
        counted = []
        for path in spec.counted_paths():
            target = os.path.join(home, os.path.relpath(path, os.path.dirname(spec.path)))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(path, target)
            counted.append(target)
        with open(os.path.join(home, SCRIPT_NAME), "w", encoding="utf-8") as f:
            f.write(rewritten)
        if spec.code == "compressed":
            from pgolf.selfextract import build

            built = build(os.path.join(home, SCRIPT_NAME), counted)
            built.write(stage, SCRIPT_NAME)
            counted = [os.path.join(stage, rel) for rel in built.plain_files]
            code = built.bytes_compressed
        else:
            code = sum(os.path.getsize(p) for p in [os.path.join(stage, SCRIPT_NAME), *counted])
        artifact_name = os.path.basename(artifact)
        shutil.copyfile(artifact, os.path.join(stage, artifact_name))
        shutil.copyfile(os.path.join(source_dir, "train.log"), os.path.join(stage, "train.log"))
        total = code + metrics["model_bytes"]
        cap = space.caps.artifact_bytes
        if total > cap and refusal is None:
            raise ScriptError(f"the exported code is {code:,} bytes (trial: {metrics['code_bytes']:,}); with the artifact "
                              f"{total:,} bytes, over the {cap:,}-byte cap; nothing written")
        submission = {"author": "YOUR NAME", "github_id": "YOUR_GITHUB_ID", "name": f"pgolf {settings.name} trial {trial.number}",
                      "blurb": f"{os.path.basename(spec.path)} with {len(baked)} default(s) set by a pgolf script study.",
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "val_loss": metrics.get("val_loss_post"), "val_bpb": metrics["val_bpb_post"],
                      "bytes_total": total, "bytes_code": code, "bytes_model": metrics["model_bytes"], "selection": selection}
        with open(os.path.join(stage, "submission.json"), "w", encoding="utf-8") as f:
            json.dump(submission, f, indent=2)
        knobs = read_knobs(original, spec.path)
        defaults = {n: env_value(knobs.get(n), v) for n, v in baked.items() if n not in no_literal}
        record = {"kind": "script", "study": settings.name, "trial": trial.number, "cap_bytes": cap,
                  "val_bpb_exact": metrics["val_bpb_post"], "code_form": spec.code, "code_bytes": code,
                  "trial_code_bytes": metrics["code_bytes"], "artifact": artifact_name, "artifact_bytes": total,
                  "model_sha256": _sha256(artifact), "counted": [os.path.relpath(p, stage) for p in counted],
                  "sources": [os.path.relpath(p, os.path.dirname(spec.path)) for p in spec.counted_paths()],
                  "defaults": defaults, "launch": launch_vars,
                  "ranks": spec.ranks, "data_provenance": provenance, "forced": bool(refusal), "refusal": refusal,
                  "run": _run_settings(spec, metrics, space.caps), "seed_spread": spread}
        with open(os.path.join(stage, RECORD_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        with open(os.path.join(stage, "README.md"), "w", encoding="utf-8") as f:
            f.write(_readme(settings.name, trial.number, metrics, record, original, spec)
                    + (f"\n## Selection\n{selection_text(selection)}\n" if selection else ""))
    return submission


def _run_settings(spec, metrics: dict, caps) -> dict:
    """How `search verify --run` runs the copy as the trial ran: its interpreter and final line, the training cap the
    study trained under (the copy keeps the script's own), and when to give up on it."""
    from search.script.study import time_limit

    cap = metrics["script_env"].get(spec.wallclock_var) if spec.wallclock_var else None
    return {"interpreter": spec.interpreter, "final_tag": spec.final_tag, "train_cap": {spec.wallclock_var: cap} if cap else {},
            "time_limit": time_limit(caps)}


def _readme(name: str, number: int, metrics: dict, record: dict, original: str, spec) -> str:
    knobs = read_knobs(original, spec.path)
    rows = "\n".join(f"| `{var}` | {knobs.get(var).default} | {value} |" for var, value in record["defaults"].items()
                     if _env_default(knobs.get(var)) != value) or "| (none) | | |"
    source = (f"`{SCRIPT_NAME}` is the self-extracting form (lzma + base85) of `{SOURCE_DIR}/{SCRIPT_NAME}` and its counted "
              f"files there: the readable source it was built from, not counted; it runs the same program.\n"
              if record["code_form"] == "compressed" else "")
    return f"""# pgolf {name}, trial {number} ({os.path.basename(spec.path)})

Post-roundtrip val_bpb **{metrics['val_bpb_post']:.6f}** at **{record['artifact_bytes']:,} bytes** = code {record['code_bytes']:,}
({record['code_form']}) + model {metrics['model_bytes']:,} (`{record['artifact']}`), measured by pgolf.
Training {metrics['train_seconds']:.1f} s ({metrics['steps']} steps), evaluation {metrics['eval_seconds']:.1f} s on the machine that ran the search.
{source}
## Defaults changed from the original script
| variable | original default | this trial |
|---|---|---|
{rows}

## Launch

    {launch_command(record['launch'], record['ranks'])}

## Verify
`search verify .` checks that the counted files are within the {record['cap_bytes']:,}-byte cap and that the copy's
defaults are the trial's settings; `search verify --run .` also runs the launch command above in a temporary folder
(with the study's training cap) and compares its score with the trial's, within the seed spread the study measured.
"""


def _env_default(knob) -> str | None:
    """The script's own default as the environment string that means it (None: no literal default)."""
    default = knob.default_value()
    return None if default is None else env_value(knob, default)


def verify_script_export(folder: str, record: dict) -> dict:
    """Bytes within the cap and equal to the record; the artifact the one scored; the copy's defaults the trial's."""
    script = os.path.join(folder, SCRIPT_NAME)
    artifact = os.path.join(folder, record["artifact"])
    for path in (script, artifact, *[os.path.join(folder, c) for c in record["counted"]]):
        if not os.path.isfile(path):
            raise VerifyError(f"{folder} is not a complete script export: {os.path.relpath(path, folder)} is missing")
    counted = [os.path.join(folder, c) for c in record["counted"]]
    code = sum(os.path.getsize(p) for p in [script, *counted])
    total = code + os.path.getsize(artifact)
    if total > record["cap_bytes"]:
        raise VerifyError(f"counted files hold {total:,} bytes, over the {record['cap_bytes']:,}-byte cap")
    if total != record["artifact_bytes"]:
        raise VerifyError(f"counted files hold {total:,} bytes, not the {record['artifact_bytes']:,} the export recorded")
    if _sha256(artifact) != record["model_sha256"]:
        raise VerifyError(f"{record['artifact']} is not the model the trial scored: it was altered after export")
    from search.submit.provenance import check_data_folders

    check_data_folders(list(record.get("data_provenance", {})))  # a leak planted since the export is refused
    readable = script
    if record["code_form"] == "compressed":
        from pgolf.selfextract import build

        readable = os.path.join(folder, SOURCE_DIR, SCRIPT_NAME)
        sources = [os.path.join(folder, SOURCE_DIR, c) for c in record["sources"]]
        with open(script, encoding="utf-8") as f:
            if not os.path.isfile(readable) or build(readable, sources).loader != f.read():
                raise VerifyError(f"{SCRIPT_NAME} is not the self-extracting form of {SOURCE_DIR}/{SCRIPT_NAME}")
    with open(readable, encoding="utf-8") as f:
        knobs = read_knobs(f.read(), readable)
    for name, text in record["defaults"].items():
        knob = knobs.get(name)
        expected = text
        for conversion in knob.first.conversions if knob else ():
            expected = CONVERTERS[conversion](expected)
        if knob is None or knob.default_value() != expected:
            found = knob.default_value() if knob else "no read"
            raise VerifyError(f"{os.path.basename(readable)}: the default of {name} is {found!r}, not the trial's {expected!r}")
    origin = f"trial {record['trial']} of study {record['study']}"
    return {"counted_bytes": total, "cap_bytes": record["cap_bytes"], "val_bpb": record["val_bpb_exact"], "origin": origin,
            "line": f"verified {folder}: {total:,} bytes <= cap {record['cap_bytes']:,} (code {code:,}, {record['code_form']}); "
                    f"{len(record['defaults'])} default(s) of {os.path.basename(readable)} equal {origin}'s settings; "
                    f"recorded val_bpb {record['val_bpb_exact']!r} (not re-run)"}
