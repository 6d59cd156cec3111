"""What every data module shares, below both pgolf/datasets.py and pgolf/demo_data.py (which builds on the
former's cache): the cache folder, the data error, the BOS token, an atomic publish of a built entry."""

import os

BOS_ID = 1


class DataError(ValueError):
    """Data that cannot be found or built; the message names the path."""


def cache_dir() -> str:
    return os.environ.get("PGOLF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pgolf")


def _publish(staging: str, target: str) -> None:
    # A rename is atomic: concurrent builders of the same entry race harmlessly, readers never see half of one.
    try:
        os.rename(staging, target)
    except OSError:
        if not os.path.isdir(target):
            raise
