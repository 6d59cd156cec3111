"""`search export`: a trial as a records-style submission folder.

    train_gpt.py        the trial's standalone script (its bytes are the trial's code_bytes)
    train_gpt_source.py compressed code only (quant.code = "compressed"): the readable script train_gpt.py is the
                        self-extracting form of; not counted, not what runs
    final_model.pgolf   the trial's compressed model (its bytes are the trial's model_bytes)
    submission.json     the records' fields (name/author/github_id are placeholders to fill in)
    README.md           config, allocation, bytes by group, bpb, how to reproduce and verify
    train.log           the trial's log
    pgolf.json          where it came from (study, trial, data) and the exact recorded figures
The counted files are train_gpt.py and final_model.pgolf; their byte total is the trial's artifact_bytes.
"""

import hashlib
import json
import os
import shutil
import time

from optuna.trial import TrialState

from objectives.constraints import is_feasible, named_constraints, pre_quant_text
from pgolf.assemble import READABLE_FILE, is_compressed
from pgolf.files import read_json
from pgolf.metrics import EXPORT_NAMES, METRICS_FILE, RunMetrics
from pgolf.staging import staged_dir
from search.budget.reruns import best_configuration, seed_spread
from search.budget.selection import selection_summary, selection_text
from search.study import StudyError, open_existing_study, trial_data, trial_dir
from search.submit.files import COUNTED_FILES, MODEL_FILE, SOURCE_FILE
from search.submit.legality import check_legality
from search.submit.provenance import check_data_folders, shard_folder



def find_trial(name: str, results: str, number: int | None):
    """(study dir, settings, study, frozen trial): the given trial, else the best feasible one."""
    directory, settings, study = open_existing_study(name, results)
    if number is None:  # the best configuration: by its mean over seeds once the best ones were re-run
        best = best_configuration(study)
        trial = best.original if best else None
        if trial is None:
            raise StudyError(f"study {name!r} has no feasible complete trial yet (pass --trial N to pick one)")
        return directory, settings, study, trial
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        raise StudyError(f"study {name!r} has no trial {number} (it has {len(study.trials)} trials)")
    return directory, settings, study, trial


def _refusal(trial) -> str | None:
    stage = trial.user_attrs.get("stage", trial.state.name.lower())
    if trial.state != TrialState.COMPLETE or stage != "complete":
        return f"trial {trial.number} is {stage}: it has no artifact ({trial.user_attrs.get('reason', 'no result')})"
    if not is_feasible(trial.constraints):
        over = ", ".join(f"{k} over by {v:g}" for k, v in named_constraints(trial).items() if v > 0)
        return f"trial {trial.number} is infeasible ({over})"
    return None


def export_trial(name: str, results: str, number: int | None, out: str, force: bool = False, replace: bool = False,
                 legality: bool = True, log=lambda line: None) -> dict:
    """legality: measure the four legality conditions on the staged folder first; a failure writes nothing."""
    directory, settings, study, trial = find_trial(name, results, number)
    refusal = _refusal(trial)
    if refusal and (not force or trial.state != TrialState.COMPLETE or trial.user_attrs.get("stage") != "complete"):
        raise StudyError(refusal + ("" if "no artifact" in refusal else "; pass --force to export it anyway"))
    spread = seed_spread(study, trial)  # what `search verify --run` judges a run from scratch by
    if "script" in settings.space:  # a script study's trial: search/script/export.py
        from search.script.export import export_script_trial

        return export_script_trial(directory, settings, trial, out, replace, refusal, log, spread=spread,
                                   selection=selection_summary(study, trial))
    source = trial_dir(directory, trial.number)
    metrics = RunMetrics.from_dict(read_json(os.path.join(source, METRICS_FILE), f"trial {trial.number}'s metrics"))
    missing = metrics.missing(EXPORT_NAMES)  # what the submission files and README are written from
    if missing:
        raise StudyError(f"trial {trial.number}'s metrics.json lacks {missing[0]!r}: the trial folder was changed")
    sizes = {f: os.path.getsize(os.path.join(source, f)) for f in COUNTED_FILES}
    if sum(sizes.values()) != metrics.artifact_bytes:
        raise StudyError(f"trial {trial.number}'s files ({sum(sizes.values()):,} bytes) do not match its recorded "
                         f"artifact_bytes {metrics.artifact_bytes:,}: the trial folder was changed")
    caps = settings.space.get("caps", {})
    data_provenance = check_data_folders([shard_folder(trial_data(directory, trial.number)["val_pattern"])], log)
    with staged_dir(out, replace=replace, flag="--replace") as stage:  # export's --force means "even if infeasible"
        for f in COUNTED_FILES + ("train.log",):
            shutil.copyfile(os.path.join(source, f), os.path.join(stage, f))
        config = metrics.config
        compressed = is_compressed(config)
        if compressed:
            shutil.copyfile(os.path.join(source, READABLE_FILE), os.path.join(stage, READABLE_FILE))
        submission = {
            "author": "YOUR NAME", "github_id": "YOUR_GITHUB_ID",
            "name": f"pgolf {name} trial {trial.number}",
            "blurb": _blurb(config, metrics),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "val_loss": metrics.val_loss_post, "val_bpb": metrics.val_bpb_post,
            "bytes_total": metrics.artifact_bytes, "bytes_code": metrics.code_bytes,
            "bytes_model": metrics.model_bytes, "selection": selection_summary(study, trial),
        }
        with open(os.path.join(stage, "submission.json"), "w", encoding="utf-8") as f:
            json.dump(submission, f, indent=2)
        with open(os.path.join(source, MODEL_FILE), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        provenance = {"study": name, "trial": trial.number, "cap_bytes": caps.get("artifact_bytes", 16_000_000),
                      "val_bpb_exact": metrics.val_bpb_post, "artifact_bytes": metrics.artifact_bytes, "model_sha256": digest,
                      "data": trial_data(directory, trial.number), "data_provenance": data_provenance,
                      "forced": bool(refusal), "refusal": refusal, "seed_spread": spread,
                      "code_form": "compressed" if compressed else "plain", "code_bytes": metrics.code_bytes}
        with open(os.path.join(stage, SOURCE_FILE), "w", encoding="utf-8") as f:
            json.dump(provenance, f, indent=2)
        if legality:
            conditions = check_legality(stage)
            for condition in conditions:
                log(condition.line())
            failed = [c.name for c in conditions if not c.passed]
            if failed:
                raise StudyError(f"trial {trial.number}'s evaluation fails the legality check ({', '.join(failed)}); nothing written")
            provenance["legality"] = {c.name: c.detail for c in conditions}
            with open(os.path.join(stage, SOURCE_FILE), "w", encoding="utf-8") as f:
                json.dump(provenance, f, indent=2)
        with open(os.path.join(stage, "README.md"), "w", encoding="utf-8") as f:
            f.write(readme(name, trial.number, metrics, provenance, submission["selection"]))
    return submission


def _blurb(config: dict, metrics: RunMetrics) -> str:
    m = config["model"]
    loop = (f", blocks {m['loop_start']}-{m['loop_start'] + m['loop_len'] - 1} looped x{m['loop_repeats']} "
            f"(eval x{config['eval']['repeats']})") if m["loop_len"] else ""
    return (f"{m['num_layers']}x{m['model_dim']}, {m['num_heads']} heads / {m['num_kv_heads']} KV, MLP {m['mlp_mult']:g}x, "
            f"sp{m['vocab_size']}{loop}; per-layer bit allocation ({metrics.allocation or ''}), "
            f"{config['quant']['compressor']}; found by a pgolf search.")


def readme(name: str, number: int, metrics: RunMetrics, provenance: dict, selection: dict) -> str:
    config = metrics.config
    groups = "\n".join(f"| {k} | {v:,} |" for k, v in metrics.bytes_by_group.items())
    bits = "\n".join(f"| `{p}` | {b} | {config['quant']['clip'].get(p, 0.0):g} |" for p, b in config["quant"]["bits"].items())
    data = provenance["data"]
    return f"""# pgolf {name}, trial {number}

Post-roundtrip val_bpb **{metrics.val_bpb_post:.6f}** ({pre_quant_text(metrics.to_dict())}) at
**{metrics.artifact_bytes:,} bytes** = code {metrics.code_bytes:,} + model {metrics.model_bytes:,}.
Training {metrics.train_seconds:.1f} s ({metrics.steps} steps, {metrics.train_tokens:,} tokens), evaluation {metrics.eval_seconds:.1f} s,
on the machine that ran the search ({data['train_pattern']}).

## Selection
{selection_text(selection)}

## Model
{_blurb(config, metrics)}

```
{json.dumps(config['model'], indent=2)}
```

## Allocation (chosen after training; later patterns override earlier ones)
| tensors | bits | clip k (x row std; 0 = percentile) |
|---|---|---|
{bits}

Compressor {config['quant']['compressor']} level {config['quant']['level']}; code {_code_form(provenance)}; evaluation: sequence {config['eval']['seq_len']},
stride {config['eval']['stride'] or 'none (chunks)'}, shared-segment unroll x{config['eval']['repeats']}.

## Bytes by group
| group | bytes |
|---|---|
{groups}

## Reproduce
Train from scratch, write the model, score it (GPUs: `torchrun --standalone --nproc_per_node=8 train_gpt.py`):

    DATA_PATH=./data/datasets/fineweb10B_sp{config['model']['vocab_size']} TOKENIZER_PATH=./data/tokenizers/fineweb_{config['model']['vocab_size']}_bpe.model python train_gpt.py

Score the shipped model only (no training):

    EVAL_ONLY=1 MODEL_PATH=final_model.pgolf DATA_PATH=... TOKENIZER_PATH=... python train_gpt.py

## Verify
`search verify .` re-scores final_model.pgolf with this folder's train_gpt.py in a fresh process with the network
blocked, checks that train_gpt.py + final_model.pgolf are within the {provenance['cap_bytes']:,}-byte cap and that the
bpb equals the recorded {provenance['val_bpb_exact']!r} on the same data; `search verify --run .` also trains it from scratch
in a temporary folder and compares that score with the trial's, within the seed spread the study measured.
`search verify --legality .` measures the
four conditions reviewers check (causal, normalised, score before update, every token scored once){_legality(provenance)}
"""


def _code_form(provenance: dict) -> str:
    if provenance.get("code_form") != "compressed":
        return "plain (train_gpt.py as assembled)"
    return (f"compressed: train_gpt.py ({provenance['code_bytes']:,} bytes, counted) is the self-extracting form "
            f"(lzma + base85) of `{READABLE_FILE}`, the readable script it was built from, not counted; it runs the same program")


def _legality(provenance: dict) -> str:
    found = provenance.get("legality")
    if not found:
        return "; it was not run at export."
    return "; at export:\n\n" + "\n".join(f"- {name}: pass ({detail})" for name, detail in found.items())
