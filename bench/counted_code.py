"""Counted code of pgolf's exports: the assembled train_gpt.py plain, stripped of docstrings and comments, and in
its self-extracting form (quant.code = "compressed", pgolf/selfextract.py), for the `tiny` config and each preset's
baseline trial, under each compressor its allocation lists (rans ships its decoder, pgolf/entropy_codec.py).

    python bench/counted_code.py
"""

import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.assemble import assemble_script, code_bytes  # noqa: E402
from pgolf.config import config_to_dict  # noqa: E402
from pgolf.configfiles import resolve_config  # noqa: E402
from pgolf.selfextract import strip  # noqa: E402
from space.sample import ParamSource, suggest_config  # noqa: E402
from space.spec import load_space  # noqa: E402


def baseline_config(space):
    """The config of the space's [baseline] values, as a study's first trial samples it."""
    return suggest_config(space, ParamSource(space.baseline))[0]


def forms(config, compressor: str) -> tuple[int, int, int, float]:
    """(plain, stripped, compressed) bytes of the config's script under `compressor`, and seconds to build the last."""
    config = dataclasses.replace(config, quant=dataclasses.replace(config.quant, compressor=compressor, code="plain"))
    plain = config_to_dict(config)
    stripped = len(strip(assemble_script(plain)).encode("utf-8"))
    started = time.perf_counter()
    compressed = code_bytes({**plain, "quant": {**plain["quant"], "code": "compressed"}})
    return code_bytes(plain), stripped, compressed, time.perf_counter() - started


def main() -> None:
    rows = [("tiny", resolve_config("tiny"), ["zstd", "rans"])]
    rows += [(f"{name} baseline", baseline_config(load_space(name)), load_space(name).allocation.compressors)
             for name in ("demo", "challenge", "frontier")]
    print("| export | compressor | plain | stripped | compressed | compressed / plain | build s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, config, compressors in rows:
        for compressor in dict.fromkeys(["zstd"] + [c for c in compressors if c == "rans"]):
            plain, stripped, compressed, seconds = forms(config, compressor)
            print(f"| {label} | {compressor} | {plain:,} | {stripped:,} | {compressed:,} | {compressed / plain:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
