"""The tune backend on real engines: Ray Tune on a two-node Ray cluster on this machine (each node with its own
CPUs and logical GPUs), a PostgreSQL storage, and one node removed mid-study as a machine would die."""

import json
import os
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from objectives.constraints import named_constraints
from test_search import finished, micro_with, one_error_line, search

# The byte predictor puts the micro space's 2-block 48-wide configs over this cap (~218 KB) and the 32-wide
# ones under it (~206 KB): some trials are rejected before training, most train.
CAP = 215_000
REJECTING = ("artifact_bytes = 226_000", f"artifact_bytes = {CAP}")


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2})
    worker = cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    yield cluster, cluster.head_node.node_id, worker
    cluster.shutdown()


def placements(folder) -> dict:
    """trial number -> placement.json of every trial folder, staged or final."""
    found = {}
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry, "placement.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                found[int(entry.lstrip(".")[:4])] = (entry, json.load(f))
    return found


def test_a_ray_address_with_nothing_behind_it_is_one_line_and_stores_nothing(tmp_path):
    from postgres import free_port

    address = f"127.0.0.1:{free_port()}"
    one_error_line(search("run", "--space", micro_with(tmp_path, "m.toml"), "--study", "n", "--backend", "tune",
                          "--address", address, results=tmp_path), rf"no Ray cluster at {address}")
    assert not (tmp_path / "n").exists()


def test_more_gpus_per_trial_than_any_node_has_is_one_line_and_stores_nothing(tmp_path, two_nodes):
    cluster, _, _ = two_nodes
    one_error_line(search("run", "--space", micro_with(tmp_path, "m.toml"), "--study", "g", "--backend", "tune",
                          "--address", cluster.address, "--gpus-per-trial", "3", results=tmp_path),
                   r"a trial asks for 3 GPU\(s\) .* more than any node of the Ray cluster has \(the largest: 2 GPU\(s\)")
    assert not (tmp_path / "g").exists()


def test_tune_options_are_refused_for_the_local_backend(tmp_path):
    one_error_line(search("run", "--space", micro_with(tmp_path, "m.toml"), "--study", "l", "--scheduler", "asha",
                          results=tmp_path), r"--scheduler asha: for the tune backend")


# Last in this file: it removes the worker node of the module's cluster.
@pytest.mark.slow  # ~45 s: a node removed mid-study; the README cluster block runs Tune over PostgreSQL in the default suite
@pytest.mark.timeout(900)
def test_a_tune_study_on_two_nodes_over_postgres_keeps_every_trial_when_a_node_dies(tmp_path, two_nodes, postgres_url):
    cluster, head, worker = two_nodes
    space = micro_with(tmp_path, "micro_tune.toml", replace=REJECTING)
    command = [sys.executable, "-m", "search.cli", "run", "--space", space, "--study", "t", "--trials", "10", "--workers", "4",
               "--backend", "tune", "--address", cluster.address, "--scheduler", "asha", "--storage", postgres_url, "--sampler-seed", "0",
               "--results", str(tmp_path)]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials = tmp_path / "t" / "trials"
    # Remove the worker node once a trial finished there and another one is training there.
    deadline, removed = time.time() + 600, False
    while time.time() < deadline and driver.poll() is None and not removed:
        if trials.exists():
            where = placements(trials)
            done_there = [n for n, (entry, p) in where.items() if not entry.startswith(".") and p["node"] == worker.node_id]
            running_there = [n for n, (entry, p) in where.items() if entry.startswith(".") and p["node"] == worker.node_id]
            if done_there and running_there:
                cluster.remove_node(worker)
                removed = True
        time.sleep(0.3)
    out, err = driver.communicate(timeout=900)
    assert removed, f"no moment with a finished and a running trial on the worker node\n{out}\n{err}"
    assert driver.returncode == 0, out + err

    study = optuna.load_study(study_name="t", storage=postgres_url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and len(finished(study)) == 10, [(t.number, t.state) for t in study.trials]
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Rejections by the byte predictor, exactly as with the local backend: told before Tune ever sees them.
    for t in study.trials:
        rejected = t.user_attrs.get("stage") == "rejected"
        assert rejected == (t.user_attrs["predicted_min_bytes"] > CAP), (t.number, t.params, t.user_attrs["predicted_min_bytes"])
        if rejected:
            assert t.state == TrialState.PRUNED
            assert named_constraints(t)["artifact_bytes"] > 0
            assert not (trials / f"{t.number:04d}").exists()
    trained = [t for t in study.trials if t.user_attrs.get("stage") != "rejected"]
    assert trained and {f"{t.number:04d}" for t in trained} == {p.name for p in trials.iterdir()}
    nodes = set()
    for t in trained:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (t.number, t.state, t.user_attrs.get("reason"))
        # Tune's ASHA alone stops trials early, from the same validation reports: the Optuna pruner stays out.
        assert json.loads((trials / f"{t.number:04d}" / "request.json").read_text())["pruner"] is None
        if t.state == TrialState.PRUNED and t.user_attrs.get("stage") == "infeasible":
            # Trained, but even its cheapest allocation packed over the cap (the predictor's ~2% error near
            # the cap): told PRUNED with its byte constraint, exactly as the local backend tells it.
            assert named_constraints(t)["artifact_bytes"] > 0, (t.number, named_constraints(t))
        elif t.state == TrialState.PRUNED:
            assert t.user_attrs["reason"].startswith("stopped by Tune's ASHA at report "), t.user_attrs["reason"]
        placement = t.user_attrs["placement"]
        assert placement["node"] in (head, worker.node_id) and placement["device"] == "cpu"
        assert placement["cuda_visible_devices"] in ("0", "1")  # one logical GPU of its node, set by Ray
        nodes.add(placement["node"])
        if t.user_attrs.get("stage") == "complete":
            assert set(named_constraints(t)) == {"artifact_bytes", "train_seconds", "eval_seconds"}
            assert t.values[0] == t.user_attrs["val_bpb_post"]
    assert nodes == {head, worker.node_id}
    assert list((tmp_path / "t" / "tune").glob("run-*/trial-*/result.json")), "Tune's own result logs"
    status = search("status", "t", results=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "ran on" in status.stdout and f"{worker.node_id[:12]} gpu " in status.stdout and f"{head[:12]} gpu " in status.stdout
    counts = {s.name: sum(t.state == s for t in study.trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    print(f"tune on 2 nodes over PostgreSQL, worker node removed: {len(study.trials)} trials, {counts}, "
          f"{sum(t.user_attrs.get('stage') == 'rejected' for t in study.trials)} rejected before training, "
          f"{sum(t.user_attrs.get('stage') == 'infeasible' for t in study.trials)} trained but over the cap, "
          f"{sum(t.user_attrs.get('stage') == 'pruned' for t in study.trials)} stopped by ASHA, nodes {len(nodes)}")
