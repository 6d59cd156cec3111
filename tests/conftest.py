"""Shared fixtures: the real data in ../shared/data, a private cache, tiny configs for fast runs."""

import os
import subprocess
import sys

import pytest

from pgolf.config import config_from_dict
from pgolf.datasets import default_data_root

DATA = default_data_root()
SHARDS = os.path.join(DATA, "datasets", "fineweb_sample_sp1024")
TOKENIZER = os.path.join(DATA, "tokenizers", "fineweb_1024_bpe.model")
TRAIN_PATTERN = os.path.join(SHARDS, "fineweb_train_*.bin")
VAL_PATTERN = os.path.join(SHARDS, "fineweb_val_*.bin")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    # Tokenizers and shards built by tests go to a per-session cache, never the user's.
    path = tmp_path_factory.mktemp("pgolf-cache")
    os.environ["PGOLF_CACHE"] = str(path)
    return path


def small_config(**sections):
    """A model small enough to train a few steps in seconds on 2 cores."""
    data = {
        "model": dict(vocab_size=1024, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_mult=2.0),
        "train": dict(seq_len=64, batch_tokens=1024, iterations=4, max_wallclock_seconds=0.0, warmdown_iters=2,
                      log_every=0, val_tokens=2048),
        "quant": dict(keep_float_max_numel=0),
        "eval": dict(batch_tokens=16384),
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def run_cli(*args, cwd=None, env=None):
    """Run a console command of this package in a fresh process; returns CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=600)


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server of this test's own (tests/postgres.py)."""
    from postgres import postgres_server

    with postgres_server() as url:
        yield url


MICRO_SPACE = os.path.join(os.path.dirname(__file__), "spaces", "micro.toml")


@pytest.fixture(scope="session")
def micro_study(tmp_path_factory):
    """(results folder, study name) of a finished 3-trial study on the micro space."""
    results = tmp_path_factory.mktemp("results")
    done = run_cli("search.cli", "run", "--space", MICRO_SPACE, "--study", "m", "--trials", "3",
                   "--sampler-seed", "0", "--results", str(results))
    assert done.returncode == 0, done.stderr + done.stdout
    return results, "m"
