"""The data provenance check (pgolf/provenance.py) as export and verify run it, for both kinds of study: a
validation document found in the training shards refuses the submission; a validation split of an unexpected
size is reported, not refused (tests and proxies use cut-down splits)."""

import os

from pgolf.provenance import ProvenanceError, check_split, dataset_dirs, tokenizer_for


def check_data_folders(folders: list[str], log=lambda line: None) -> dict:
    """{shard folder: summary} for each folder that holds training and validation shards (others are skipped);
    a leak raises ProvenanceError naming the document."""
    checked = {}
    for root in folders:
        try:
            found = dataset_dirs(root)
        except ProvenanceError:
            continue  # not a data folder
        for folder in found:
            if folder in checked:
                continue
            report = check_split(folder, tokenizer=tokenizer_for(root, folder))
            if report.leaks:
                raise ProvenanceError(f"data provenance: {report.refusal()}; nothing written")
            log(report.summary() + (f" (note: {report.problems[0]})" if report.problems else ""))
            checked[folder] = report.summary()
    return checked


def shard_folder(pattern: str) -> str:
    """The folder of a trial's shard pattern (.../fineweb_val_*.bin)."""
    return os.path.dirname(pattern)
