"""Shared fixtures: the real data in ../shared/data, a private cache, tiny configs for fast runs."""

import functools
import os
import subprocess
import sys

import pytest

from pgolf.config import config_from_dict
from pgolf.datasets import default_data_root, shared_data_root

# The real data, ../shared/data (or PGOLF_DATA). Where it is absent, PGOLF_DATA names its missing path, so that a
# test needing it, in this process or a command it starts, fails naming that path rather than fetching the demo's
# data; pytest_runtest_makereport below turns exactly those failures into skips that say why.
MISSING_DATA = None if os.environ.get("PGOLF_DATA") or os.path.isdir(shared_data_root()) else shared_data_root()
if MISSING_DATA:
    os.environ["PGOLF_DATA"] = MISSING_DATA
DATA = default_data_root()
SHARDS = os.path.join(DATA, "datasets", "fineweb_sample_sp1024")
TOKENIZER = os.path.join(DATA, "tokenizers", "fineweb_1024_bpe.model")
TRAIN_PATTERN = os.path.join(SHARDS, "fineweb_train_*.bin")
VAL_PATTERN = os.path.join(SHARDS, "fineweb_val_*.bin")


def require_data() -> None:
    """For a test whose failure without the data would not name the missing path (it waits on a trial that never
    trains): skip it up front, saying why."""
    if MISSING_DATA:
        pytest.skip(f"needs the real data in {MISSING_DATA}, absent here")


@functools.cache
def sample_luts():
    """The sp1024 tokenizer's byte tables, loaded by the first test that needs them: not at import, so that without the
    real data the test modules still collect and their tests skip naming the missing path."""
    from pgolf.bpb import ByteLuts, load_tokenizer

    return ByteLuts(load_tokenizer(TOKENIZER, 1024), 1024)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if MISSING_DATA and report.failed and MISSING_DATA in str(report.longrepr):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"needs the real data in {MISSING_DATA}, absent here")


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if MISSING_DATA and MISSING_DATA in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("-", f"{len(skipped)} skipped: they need the real data in {MISSING_DATA}, absent here")
        for report in skipped:
            terminalreporter.write_line(f"SKIPPED {report.nodeid}: needs {MISSING_DATA} (absent)")


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
