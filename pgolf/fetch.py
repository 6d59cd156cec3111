"""`pgolf data fetch`: the official FineWeb shards and tokenizer, downloaded the challenge's way.

Same source and layout as the challenge's `data/cached_challenge_fineweb.py` (Hugging Face dataset
willdepueoai/parameter-golf): DIR/datasets/fineweb10B_<variant>/ and DIR/tokenizers/. Whole shards (100 M
tokens each); the demo's small cut of them is pgolf/demo_data.py's.
"""

import os
import shutil

from pgolf.datacache import DataError

REMOTE_ROOT = "matched_10B_docs2m_seed1337"
DEFAULT_REPO = "willdepueoai/parameter-golf"


def _download(repo: str, remote: str, local: str) -> None:
    from pgolf import hub

    if os.path.exists(local):
        return
    cached = hub.download_file(repo, remote)  # through the hub cache, which keeps and resumes partial downloads
    partial = local + ".partial"
    try:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        shutil.copyfile(cached, partial)
        os.replace(partial, local)
    except OSError as exc:
        if os.path.exists(partial):
            os.remove(partial)  # never a partial file in the data folder
        raise hub.failure(exc, remote) from None


def fetch_official(target: str, variant: str, train_shards: int, repo: str) -> None:
    """The official shards and tokenizer into `target`, from HF_ENDPOINT (huggingface.co unless set), or the
    hub cache; the hub client's own settings (HF_TOKEN, HF_HUB_OFFLINE, HF_HOME) apply."""
    if not variant.startswith("sp") or not variant[2:].isdigit():
        raise DataError(f"unknown variant {variant!r}: expected sp<vocab>, e.g. sp1024")
    if train_shards < 1:
        raise DataError("--train-shards must be at least 1")
    vocab = variant[2:]
    dataset = f"fineweb10B_{variant}"
    files = [(f"datasets/{dataset}/fineweb_val_000000.bin", f"datasets/{dataset}/fineweb_val_000000.bin")]
    files += [(f"datasets/{dataset}/fineweb_train_{i:06d}.bin",) * 2 for i in range(train_shards)]
    files += [(f"tokenizers/fineweb_{vocab}_bpe.{ext}",) * 2 for ext in ("model", "vocab")]
    for remote, local in files:
        _download(repo, f"{REMOTE_ROOT}/{remote}", os.path.join(target, local))
        print(f"fetched {os.path.join(target, local)}")
