"""The GPU check's bundle: what bench/gpu_prepare.sh puts into gpu_bundle/ and bench/gpu_check.sh reads there.

A bare GPU machine has a Python with torch, numpy, sentencepiece and pytest, no package index and no data beside
the checkout; the bundle brings the rest in one git-ignored folder of the checkout (so the device tool's `carry`
takes it along):
    wheels/            the wheels of what the check needs and such a machine lacks (zstandard), one per Python version
    requirements.txt   their pinned names: installed from wheels/ with no index
    data/              a slice of the data, laid out as the challenge's data/ folder:
      tokenizers/fineweb_1024_bpe.model, datasets/fineweb_sample_sp1024/   the official tokenizer, the sample shards
      tokenizers/fineweb_8192_bpe.model, datasets/fineweb_sample_sp8192/   sp8192 (the frontier shape's vocabulary),
                       trained and encoded by pgolf (pgolf.datasets.build_dataset) from the sample's documents
      Each train split is there twice (fineweb_train_000000 and _000001, the same tokens): calibration reads
      1,048,576 training tokens (the frontier preset's calib_tokens), more than the sample holds.
    official/train_gpt.py   your copy of the official script, where gpu_prepare.sh --official named one (never shipped)
    manifest.json      what is in it, and what the bundle and the checkout weigh together (the device tool carries 64 MiB)

    python bench/gpu_bundle.py data SOURCE_DATA DEST_DATA    # the data slice (SOURCE: ../shared/data's layout)
    python bench/gpu_bundle.py manifest BUNDLE               # writes BUNDLE/manifest.json, fails over the cap
"""

import glob
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BUNDLE_DIR = os.path.join(ROOT, "gpu_bundle")
CARRY_CAP_BYTES = 64 * 2**20  # what the device tool carries: the working tree and the carried folders together
SAMPLE_DATASET = "fineweb_sample_sp{vocab}"
TOKENIZER = "fineweb_{vocab}_bpe.model"


def bundle_data_paths(data_root: str, vocab: int):
    """The bundle's shards and tokenizer for `vocab` (a pgolf DataPaths)."""
    from pgolf.datasets import DataPaths

    shards = os.path.join(data_root, "datasets", SAMPLE_DATASET.format(vocab=vocab))
    return DataPaths(os.path.join(shards, "fineweb_train_*.bin"), os.path.join(shards, "fineweb_val_*.bin"),
                     os.path.join(data_root, "tokenizers", TOKENIZER.format(vocab=vocab)), vocab)


def _place(train: str, val: str, tokenizer: str, dest: str, vocab: int) -> None:
    shards = os.path.join(dest, "datasets", SAMPLE_DATASET.format(vocab=vocab))
    os.makedirs(shards, exist_ok=True)
    os.makedirs(os.path.join(dest, "tokenizers"), exist_ok=True)
    for i in range(2):
        shutil.copyfile(train, os.path.join(shards, f"fineweb_train_{i:06d}.bin"))
    shutil.copyfile(val, os.path.join(shards, "fineweb_val_000000.bin"))
    shutil.copyfile(tokenizer, os.path.join(dest, "tokenizers", TOKENIZER.format(vocab=vocab)))


def prepare_data(source: str, dest: str) -> None:
    """sp1024 copied from `source` (the official tokenizer and the sample's shards), sp8192 built from its documents."""
    from pgolf.datasets import build_dataset, document_files, resolve_data

    official = resolve_data(source, 1024)
    train, val = glob.glob(official.train_pattern), glob.glob(official.val_pattern)
    if len(train) != 1 or len(val) != 1:
        raise SystemExit(f"error: {source}: expected one sp1024 train and one val shard (the sample), found {len(train)} and {len(val)}")
    _place(train[0], val[0], official.tokenizer, dest, 1024)
    docs = document_files(source)
    if docs is None:
        raise SystemExit(f"error: {source} has no docs/*train*.jsonl and *val*.jsonl to build the sp8192 slice from")
    built = build_dataset(docs[0], docs[1], 8192)
    _place(glob.glob(built.train_pattern)[0], glob.glob(built.val_pattern)[0], built.tokenizer, dest, 8192)


def _files_under(folder: str, skip: set = frozenset()) -> list[str]:
    found = []
    for d, dirs, files in os.walk(folder):
        dirs[:] = [x for x in dirs if x not in skip]
        found += [os.path.join(d, f) for f in files]
    return found


def checkout_bytes(root: str = ROOT) -> int:
    """Bytes of what the device tool sends of the checkout: tracked and untracked-not-ignored files."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                                check=True).stdout.decode().split("\0")
        paths = [os.path.join(root, p) for p in listed if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (a copy): every file but the usual ignored ones
        paths = _files_under(root, skip={".git", ".venv", "gpu_bundle", "__pycache__", ".pytest_cache"})
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p) and not os.path.islink(p))


def write_manifest(bundle: str) -> dict:
    files = sorted(_files_under(bundle))
    manifest = {
        "wheels": sorted(os.path.basename(f) for f in glob.glob(os.path.join(bundle, "wheels", "*.whl"))),
        "data": {os.path.relpath(f, os.path.join(bundle, "data")): os.path.getsize(f) for f in files
                 if f.startswith(os.path.join(bundle, "data") + os.sep)},
        "bundle_bytes": sum(os.path.getsize(f) for f in files if not f.endswith("manifest.json")),
        "checkout_bytes": checkout_bytes(os.path.dirname(os.path.abspath(bundle))),
    }
    manifest["carried_bytes"] = manifest["bundle_bytes"] + manifest["checkout_bytes"]
    manifest["carry_cap_bytes"] = CARRY_CAP_BYTES
    with open(os.path.join(bundle, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "data":
        try:
            prepare_data(sys.argv[2], sys.argv[3])
        except (ValueError, OSError) as exc:  # pgolf's data, shard and tokenizer errors say what is missing in one line
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "manifest":
        m = write_manifest(sys.argv[2])
        print(f"bundle {m['bundle_bytes'] / 2**20:.1f} MiB + checkout {m['checkout_bytes'] / 2**20:.1f} MiB = "
              f"{m['carried_bytes'] / 2**20:.1f} MiB carried (cap {CARRY_CAP_BYTES / 2**20:.0f} MiB)")
        if m["carried_bytes"] > CARRY_CAP_BYTES:
            print(f"error: the bundle and the checkout weigh {m['carried_bytes']:,} bytes, over the device tool's "
                  f"{CARRY_CAP_BYTES:,}", file=sys.stderr)
            return 1
        return 0
    print(__doc__.strip().splitlines()[-2].strip() + "\n" + __doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
