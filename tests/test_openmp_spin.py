"""The short OpenMP spin (pgolf/__init__.py) is set before torch loads, in every process pgolf or search starts,
and a user's own OpenMP setting wins."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = "import {module}, os, sys; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"


def probe(module: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, check=True).stdout.split()


def test_importing_pgolf_or_search_sets_a_short_spin_before_torch_is_loaded():
    assert probe("pgolf") == ["1000", "False"]
    assert probe("search") == ["1000", "False"]


def test_a_users_own_openmp_setting_wins():
    assert probe("pgolf", GOMP_SPINCOUNT="50")[0] == "50"
    assert probe("pgolf", OMP_WAIT_POLICY="ACTIVE")[0] == "None"
