"""The benches' demo spaces with TTT open (bench/spaces/demo_ttt.toml, demo_joint.toml) are the demo preset as it
ships plus their own lines at the end, so a change of the preset reaches the figures they measure."""

import os

import pytest

from space.spec import load_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "space", "presets", "demo.toml")


@pytest.mark.parametrize("name, extra", [("demo_ttt", {"ttt_chunk", "ttt_rank"}),
                                         ("demo_joint", {"ttt_chunk", "ttt_rank", "eval_choice", "ngram_order"})])
def test_a_bench_space_is_the_demo_preset_plus_its_own_allocation_keys(name, extra):
    with open(PRESET, encoding="utf-8") as f:
        preset = f.read()
    with open(os.path.join(ROOT, "bench", "spaces", f"{name}.toml"), encoding="utf-8") as f:
        bench = f.read()
    body = preset[preset.index('name = "demo"\n') + len('name = "demo"\n'):].rstrip("\n")
    assert body in bench, f"bench/spaces/{name}.toml no longer carries the demo preset as it ships"
    added = bench[bench.index(body) + len(body):].strip().splitlines()
    assert {line.split("=")[0].strip() for line in added} == extra
    space = load_space(os.path.join(ROOT, "bench", "spaces", f"{name}.toml"))
    assert space.allocation.ttt_chunk == [64, 128] and space.allocation.sensitivity == "fisher"
