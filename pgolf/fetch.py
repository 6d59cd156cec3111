"""`pgolf data fetch`: the official FineWeb shards and tokenizer, downloaded the challenge's way.

Same source and layout as the challenge's `data/cached_challenge_fineweb.py` (Hugging Face dataset
willdepueoai/parameter-golf): DIR/datasets/fineweb10B_<variant>/ and DIR/tokenizers/.
"""

import os
import shutil
import socket

from pgolf.datasets import DataError

REMOTE_ROOT = "matched_10B_docs2m_seed1337"


def _download(repo: str, remote: str, local: str) -> None:
    from huggingface_hub import hf_hub_download

    if os.path.exists(local):
        return
    cached = hf_hub_download(repo_id=repo, filename=remote, repo_type="dataset")
    os.makedirs(os.path.dirname(local), exist_ok=True)
    shutil.copyfile(cached, local + ".partial")
    os.replace(local + ".partial", local)


def fetch_official(target: str, variant: str, train_shards: int, repo: str) -> None:
    if not variant.startswith("sp") or not variant[2:].isdigit():
        raise DataError(f"unknown variant {variant!r}: expected sp<vocab>, e.g. sp1024")
    if train_shards < 1:
        raise DataError("--train-shards must be at least 1")
    try:
        import huggingface_hub  # noqa: F401  (optional dependency: pip install pgolf[fetch])
    except ImportError:
        raise DataError("pgolf data fetch needs huggingface_hub: pip install huggingface_hub") from None
    try:  # fail fast and plainly when offline, instead of the hub client's minute of retries
        socket.create_connection(("huggingface.co", 443), timeout=10).close()
    except OSError as exc:
        raise DataError(f"cannot reach huggingface.co ({exc.strerror or exc}): fetching needs internet; "
                        "put the shards and tokenizer under --dir in the challenge layout yourself, or pass the other commands --data") from None
    vocab = variant[2:]
    dataset = f"fineweb10B_{variant}"
    files = [(f"datasets/{dataset}/fineweb_val_000000.bin", f"datasets/{dataset}/fineweb_val_000000.bin")]
    files += [(f"datasets/{dataset}/fineweb_train_{i:06d}.bin",) * 2 for i in range(train_shards)]
    files += [(f"tokenizers/fineweb_{vocab}_bpe.{ext}",) * 2 for ext in ("model", "vocab")]
    for remote, local in files:
        try:
            _download(repo, f"{REMOTE_ROOT}/{remote}", os.path.join(target, local))
        except Exception as exc:  # network and hub errors come in many types; all end the fetch the same way
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot download {remote} from huggingface.co/{repo}: {reason}") from None
        print(f"fetched {os.path.join(target, local)}")
