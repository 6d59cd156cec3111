"""A script study on the tune backend: a script trial is the same trial process under Tune as under the local backend
(python -m search.trial DIR, which runs the script), on a Ray of its own (own --temp-dir) with two logical GPUs, so
each trial also shows the device Ray gave it."""

import json
import os
import shutil
import tempfile

import pytest

from search.study import open_storage
from test_script_study import OFFICIAL, official_space, search


@pytest.mark.slow  # a Ray of its own and three script trials
@pytest.mark.timeout(600)
def test_a_script_study_runs_on_tune_as_on_the_local_backend(tmp_path, capsys):
    import optuna
    import ray

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        node = ray.get_runtime_context().get_node_id()
        results = tmp_path / "results"
        space = official_space(tmp_path, dims="[dims.MATRIX_LR]\nchoices = [0.0005, 0.02, 0.04]\n[search]\npruner = \"none\"\n")
        code, out, err = search(capsys, "run", "--space", space, "--study", "t", "--trials", "3", "--workers", "2", "--backend", "tune",
                                "--sampler-seed", "0", "--results", str(results))
        assert code == 0, err + out
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    settings = json.loads((results / "t" / "study.json").read_text())
    study = optuna.load_study(study_name="t", storage=open_storage(settings["storage"]))
    assert settings["backend"] == "tune" and len(study.trials) == 3
    for t in study.trials:
        assert t.state.name == "COMPLETE" and t.user_attrs["stage"] == "complete", (t.number, t.user_attrs.get("reason"))
        folder = results / "t" / "trials" / f"{t.number:04d}"
        metrics = json.loads((folder / "metrics.json").read_text())  # written by the script trial's own code, as locally
        assert metrics["kind"] == "script" and metrics["code_bytes"] == os.path.getsize(OFFICIAL) and metrics["val_bpb_post"] == t.values[0]
        assert metrics["final_line"].startswith("final_int8_zlib_roundtrip_exact") and metrics["steps"] == 20
        placement = t.user_attrs["placement"]
        assert placement["node"] == node and placement["cuda_visible_devices"] in ("0", "1"), placement  # set by Ray
    assert list((results / "t" / "tune").glob("run-*/trial-*/result.json")), "Tune's own result logs"
    code, out, err = search(capsys, "status", "t", "--results", str(results))
    assert code == 0 and "ran on" in out, out
