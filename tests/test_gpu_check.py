"""The GPU check as shipped, end to end on the CPU, in the bare GPU machine's situation: a Python holding only torch,
numpy, sentencepiece and pytest (and what they need), no package index, a copy of the checkout with gpu_bundle/ in
it and no ../shared beside it. bench/gpu_check.sh installs the bundle's wheels with no index and runs the check;
the GPU parts say skipped, and the same parts run at CPU sizes (cpu_smoke) and must succeed.

The bundle is made by bench/gpu_prepare.sh, which downloads wheels (skipped where the package index is unreachable);
it holds wheels for Python 3.12 (the GPU machines') and for this interpreter's version."""

import importlib.metadata as metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARE_PACKAGES = ("torch", "numpy", "sentencepiece", "pytest", "pip")  # what the bare GPU machine's Python is known to hold


def distributions_needed(names) -> set[str]:
    """The installed distributions `names` need, with everything they require (extras left out), by name."""
    needed, todo = set(), list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in needed:
            continue
        needed.add(name)
        for line in metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return needed


def bare_python(folder: str) -> str:
    """A virtualenv whose site-packages holds only BARE_PACKAGES and their requirements (links to this environment's
    installed copies): the bare machine's Python, as far as packages go. Returns its interpreter."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", folder], check=True)
    python = os.path.join(folder, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True,
                          text=True, check=True).stdout.strip()
    here = sysconfig.get_path("purelib")
    for name in distributions_needed(BARE_PACKAGES):
        for top in {str(f).split("/")[0] for f in metadata.distribution(name).files or []}:
            source = os.path.join(here, top)
            if os.path.exists(source) and not top.startswith("..") and not os.path.exists(os.path.join(site, top)):
                os.symlink(source, os.path.join(site, top))
    return python


def copy_checkout(dest: str) -> None:
    """The files the device tool sends: tracked and untracked-not-ignored ones, then gpu_bundle/ (carried)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True)
    for path in filter(None, listed.stdout.decode().split("\0")):
        if os.path.isfile(os.path.join(ROOT, path)):
            os.makedirs(os.path.dirname(os.path.join(dest, path)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, path), os.path.join(dest, path))
    shutil.copytree(os.path.join(ROOT, "gpu_bundle"), os.path.join(dest, "gpu_bundle"))


@pytest.fixture(scope="module")
def bundle():
    """gpu_bundle/ in this checkout, prepared by bench/gpu_prepare.sh (once: an existing one is reused)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = os.path.join(ROOT, "gpu_bundle")
    tag = f"cp{version.replace('.', '')}"
    if not (os.path.isdir(path) and any(tag in w for w in os.listdir(os.path.join(path, "wheels")))):
        done = subprocess.run([os.path.join(ROOT, "bench", "gpu_prepare.sh"), "--python", version], cwd=ROOT, capture_output=True,
                              text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=600)
        if done.returncode != 0 and "is the package index reachable?" in done.stderr:
            pytest.skip(f"bench/gpu_prepare.sh could not download its wheels here: {done.stderr.strip().splitlines()[-1]}")
        assert done.returncode == 0, done.stdout + done.stderr
    return path


def test_the_bundle_holds_python_3_12_wheels_and_fits_the_carry_cap(bundle):
    with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    assert any("-cp312-cp312-manylinux" in w and w.startswith("zstandard-") for w in manifest["wheels"]), manifest["wheels"]
    assert manifest["carried_bytes"] < 64 * 2**20, manifest
    assert {"tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_8192_bpe.model"} <= set(manifest["data"])


@pytest.mark.slow  # ~30 s plus wheel downloads: a check of the GPU check
@pytest.mark.timeout(3600)  # a minute or two on an idle machine; the CPU-sized parts slow down by the load
def test_the_gpu_check_runs_as_shipped_on_a_bare_python_without_shared_data(bundle, tmp_path):
    python = bare_python(str(tmp_path / "bare"))
    missing = subprocess.run([python, "-c", "import zstandard"], capture_output=True, text=True)
    assert missing.returncode != 0, "the bare Python must lack zstandard, as the GPU machines do"
    checkout = tmp_path / "machine" / "checkout"
    copy_checkout(str(checkout))
    assert not (tmp_path / "machine" / "shared").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGOLF_", "PIP_", "VIRTUAL_ENV"))}
    env.update(PYTHON=python, GPU_CHECK_VENV=str(tmp_path / "venv"), PGOLF_CACHE=str(tmp_path / "cache"),
               PIP_CONFIG_FILE=os.devnull, PATH=os.path.dirname(python) + os.pathsep + env["PATH"])
    out = tmp_path / "out" / "gpu_check.json"
    done = subprocess.run(["bench/gpu_check.sh", "--out", str(out), "--budget", "3000", "--limit-scale", os.environ.get("PGOLF_GPU_CHECK_LIMIT_SCALE", "1")], cwd=checkout, capture_output=True, text=True,
                          env=env, timeout=3600)
    assert out.exists(), done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads(out.read_text())
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert done.returncode == 0 and summary["ok"], json.dumps(summary, indent=2) + log[-4000:] + done.stderr[-2000:]
    assert summary["python"] == platform.python_version() and not summary["cuda"]
    for part in ("cuda_tests", "baseline_shape", "official", "frontier_shape", "calibration", "ttt"):
        assert summary[part] == {"skipped": "no CUDA device"}
    smoke = summary["cpu_smoke"]
    assert smoke["cuda_tests"]["passed"] == 2, smoke["cuda_tests"]
    for name in ("baseline_shape", "frontier_shape"):
        assert smoke[name]["ms_per_step"] > 0 and smoke[name]["timed_steps_started"] == 7, smoke[name]
        # The CPU's SDPA kernel (aten::_scaled_dot_product_flash_attention_for_cpu), read off the profiled step.
        assert smoke[name]["attention"] == "flash", smoke[name]
    assert smoke["frontier_shape"]["validation"]["seq_len"] == 320
    assert smoke["official"]["steps_logged"] == 12 and "ms_per_step" in smoke["official"], smoke["official"]
    assert smoke["calibration"]["total_seconds"] >= 0 and smoke["calibration"]["model_bytes"] > 0, smoke["calibration"]
    assert smoke["ttt"]["documents"] >= 1 and smoke["ttt"]["ttt_seconds"] > 0 and smoke["ttt"]["tokens"] >= 512, smoke["ttt"]


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_the_gpu_parts_configs_are_valid_and_the_bundle_feeds_them(bundle, scale):
    """What the GPU parts run at full size, checked here before any GPU time is spent on it: the configs validate, a
    step splits into its passes, and the bundle holds the tokens calibration and TTT read."""
    sys.path.insert(0, ROOT)
    from bench.gpu_bundle import bundle_data_paths
    from bench.gpu_parts import SCALES, calibration_config, preset_config, shape_config, ttt_settings
    from pgolf.gptq import check_calibration
    from pgolf.shards import validation_tokens
    from pgolf.train import batch_plan

    s, smoke = SCALES[scale], scale == "smoke"
    for name in ("baseline", "frontier"):
        config = shape_config(preset_config(name, smoke), name, s, "auto")
        assert batch_plan(config.train, 1)[:2] == (s.pass_tokens, s.passes)
        assert config.train.val_every == (s.steps - 2 if name == "frontier" else 0)
    frontier = preset_config("frontier", smoke)
    if not smoke:  # the frontier preset's baseline trial: the 1.0565 record's shape
        assert (frontier.model.vocab_size, frontier.model.num_layers, frontier.model.loop_repeats, frontier.eval_seq_len()) == (8192, 11, 3, 2560)
    data = bundle_data_paths(os.path.join(bundle, "data"), frontier.model.vocab_size)
    calibration = calibration_config(frontier, s)
    assert check_calibration(data.train_pattern, calibration.train.seq_len, calibration.quant.calib_tokens) >= 1
    settings = ttt_settings(frontier)
    assert validation_tokens(data.val_pattern, settings.seq_len, frontier.model.vocab_size).numel() > s.ttt_tokens + settings.seq_len


def test_the_official_step_is_read_off_the_official_scripts_own_log():
    """The official part's parser on a log the official train_gpt.py wrote (../shared/data/official_tiny, a CPU run)."""
    sys.path.insert(0, ROOT)
    from bench.gpu_parts import OFFICIAL_PEAK, official_figures
    from conftest import DATA

    with open(os.path.join(DATA, "official_tiny", "train.log"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    figures = official_figures(lines, passes=1)
    assert figures["steps_logged"] == 14 and figures["peak_allocated_gib"] == 0.0  # steps 1-10, then every 50th
    # Its step times: train_time 719 ms after step 1, 1,466 after step 2, ...; the median of steps 3..10 (consecutive lines).
    assert 400 < figures["ms_per_step"] < 1500 and figures["ms_per_pass"] == figures["ms_per_step"]
    assert sum(bool(OFFICIAL_PEAK.match(line)) for line in lines) == 1  # the line after training that ends the part's wait
