"""The CUDA path (marked `cuda`; skipped where torch sees no GPU, run by bench/gpu_check.sh on a GPU machine).

A short training run on the GPU (bf16 autocast, the compiled fast paths), its artifact scored back on the GPU
and on the CPU from the same bytes, and an exported script trained and scored with DEVICE=cuda."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pgolf.assemble import assemble_script
from pgolf.config import config_to_dict
from pgolf.datasets import DataPaths
from pgolf.run import rescore, run
from pgolf.submission import setup_runtime

from conftest import SHARDS, TOKENIZER, TRAIN_PATTERN, VAL_PATTERN, small_config

# PGOLF_TEST_DEVICE=cpu runs these same tests on the CPU: a check of the tests themselves on a machine with no GPU.
DEVICE = os.environ.get("PGOLF_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")]
DATA = DataPaths(train_pattern=TRAIN_PATTERN, val_pattern=VAL_PATTERN, tokenizer=TOKENIZER, vocab_size=1024)


def test_a_run_on_the_gpu_scores_the_same_bytes_on_gpu_and_cpu(tmp_path):
    config = small_config(train=dict(iterations=20), model=dict(loop_start=0, loop_len=2, loop_repeats=2))
    metrics = run(config, DATA, str(tmp_path / "gpu"), device=DEVICE)
    assert metrics.steps == 20 and metrics.val_bpb_post < 8.0
    on_cpu = rescore(str(tmp_path / "gpu"), DATA, setup_runtime("cpu"))
    # bf16 matmuls on the GPU against fp32 on the CPU: the same model, scored within bf16 rounding.
    assert abs(on_cpu["val_bpb_post"] - metrics.val_bpb_post) < 0.02, (on_cpu, metrics.val_bpb_post)


def test_an_exported_script_trains_and_scores_on_the_gpu(tmp_path):
    config = small_config(train=dict(iterations=10))
    script = tmp_path / "train_gpt.py"
    script.write_text(assemble_script(config_to_dict(config)))
    env = dict(os.environ, DATA_PATH=SHARDS, TOKENIZER_PATH=TOKENIZER, DEVICE=DEVICE, PYTHONPATH="")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "final_model.pgolf.result.json").read_text())
    assert result["val_bpb"] < 8.0

