"""Trials as Ray Tune trials on a Ray cluster: `search run --backend tune [--address HOST:PORT]`.

Tune places each trial on a node with its CPUs and GPUs (Ray sets the trial's CUDA_VISIBLE_DEVICES), retries
a trial whose node died, can stop trials early with its own scheduler (ASHA) and logs every result under
results/<study>/tune/. Which trial to run and what its outcome means stay with the coordinator:
StudySearcher is Tune's searcher, and its suggest and on_trial_complete call the coordinator's prepare_next
(Optuna's ask, the byte-predictor rejection) and finish (tell, set_constraint), the code the local backend
calls too. A trial is still `python -m search.trial DIR` in a process of its own, started by run_on_node on
the node Tune chose, which passes the trial's validation reports on to Tune as they come.

Every node must see the study's results folder (one machine, or a filesystem the cluster shares): the
trial reads its request there and writes its files there.

Resume: the study is the Optuna study in its storage, whichever backend ran which trial, so `search resume`
starts a new Tune experiment on the same study; trials a dead driver left RUNNING are failed and queued
again as with the local backend. Tune's own experiment restore is not used (the searcher's state is the
storage).
"""

import json
import logging
import math
import os
import shutil
import socket
import subprocess
import time

from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from search.backends.base import Backend, study_trial_ranks
from search.backends.process import WORKER_LOG, Job, end_process_group, trial_process_setup, worker_command, worker_env
from search.budget.fidelity import PrunerSpec
from search.study import StudyError
from search.trialfiles import REQUEST_FILE, RESULT_FILE, read_reports

SCHEDULERS = ("fifo", "asha")
RETRIES = 2  # Tune restarts a trial this many times when its process or node dies


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address: HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:PORT."""
    bare = address.split("://", 1)[-1]
    host, _, port = bare.rpartition(":")
    if not host:
        return bare, 10001 if address.startswith("ray://") else 6379
    if not port.isdigit():
        raise StudyError(f"Ray address {address!r} is not HOST:PORT")
    return host, int(port)


def ray_token_available() -> bool:
    """Whether this machine holds a Ray cluster token where Ray looks for one (its variable, its file)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def connect(address: str | None) -> bool:
    """Join the Ray cluster at `address`, or start a local one; True if this process started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address and address != "auto":
        # ray.init waits a long while on an address with nothing behind it; a plain TCP connect says at once.
        host, port = parse_address(address)
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as exc:
            raise StudyError(f"no Ray cluster at {address} ({exc.strerror or exc}): start one with `ray start --head` "
                             f"on the head node, or leave --address unset for a Ray on this machine") from None
    # Ray's and Tune's own warnings (token authentication, metrics of a trial stopped before its first result)
    # would interleave with the study's lines; errors still show.
    logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            # "local": a Ray of its own, even where another one runs on this machine (ray.init would join that one)
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        # `ray start --head` turns token authentication on (Ray 2.60), and a driver given an address sends the
        # token only when told to; Ray's refusal does not say so, and a cluster without tokens cannot be told apart
        # before joining, so the remedy is named rather than guessed.
        hint = (" (a cluster started by `ray start --head` checks a token: set RAY_AUTH_MODE=token here, with the "
                "head's ~/.ray/auth_token copied to this machine or RAY_AUTH_TOKEN set)"
                if address and "RAY_AUTH_MODE" not in os.environ and ray_token_available() else "")
        raise StudyError(f"cannot join the Ray cluster at {address or 'this machine'}: {str(exc).strip().splitlines()[0]}{hint}") from None
    return True


def trial_resources(settings, nodes: list[dict]) -> tuple[float, float]:
    """(CPUs, GPUs) per trial: the settings', else 1 GPU per rank (an engine trial's DDP ranks, a script's torchrun
    ranks) where the cluster has GPUs, and an equal share of its CPUs. Refused in one line when no single node has
    that much (Tune would wait for it forever)."""
    total = {"CPU": sum(n["Resources"].get("CPU", 0) for n in nodes), "GPU": sum(n["Resources"].get("GPU", 0) for n in nodes)}
    gpus = settings.gpus_per_trial if settings.gpus_per_trial is not None else (float(study_trial_ranks(settings)) if total["GPU"] >= 1 else 0.0)
    cpus = settings.cpus_per_trial or max(1.0, float(int(total["CPU"] // max(settings.workers, 1))))
    if not any(n["Resources"].get("CPU", 0) >= cpus and n["Resources"].get("GPU", 0) >= gpus for n in nodes):
        largest = max(nodes, key=lambda n: (n["Resources"].get("GPU", 0), n["Resources"].get("CPU", 0)))
        raise StudyError(f"a trial asks for {gpus:g} GPU(s) and {cpus:g} CPU(s), more than any node of the Ray cluster has "
                         f"(the largest: {largest['Resources'].get('GPU', 0):g} GPU(s), {largest['Resources'].get('CPU', 0):g} CPU(s)): "
                         f"lower --gpus-per-trial / --cpus-per-trial")
    return cpus, gpus


def asha_settings(space, objectives: str) -> dict:
    """ASHA's rungs in validation reports, from the same [search] table the Optuna pruners read."""
    spec = PrunerSpec.of(space, objectives)
    return dict(time_attr="report", metric="val_bpb", mode="min", grace_period=spec.min_resource,
                reduction_factor=max(2, spec.reduction_factor), max_t=spec.max_resource + 1,
                stop_last_trials=False)  # a trial that reached its last report has finished training: never cut it


class TuneBackend(Backend):
    """Trials as Ray Tune trials (one Tune experiment per `search run` / `search resume`)."""

    name = "tune"

    def __init__(self, settings):
        import ray

        if settings.scheduler not in SCHEDULERS:
            raise StudyError(f"unknown Tune scheduler {settings.scheduler!r} (use {', '.join(SCHEDULERS)})")
        self.settings = settings
        self.stops_trials = settings.scheduler != "fifo"  # ASHA stops trials; the Optuna pruner then stays out
        if self.stops_trials and settings.objectives != "bpb":
            raise StudyError("Tune's ASHA ranks trials by one metric: a bpb,bytes study uses --scheduler fifo "
                             "(its [search] pruner then runs inside each trial, as with the local backend)")
        self.started_ray = connect(settings.address)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.cpus, self.gpus = trial_resources(settings, nodes)
        self.threads = max(1, int(self.cpus))

    def drive(self, coordinator) -> None:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        # Ctrl-C and SIGTERM are the coordinator's (they stop the study in order); Tune ends through StopOnSignal.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        # The coordinator prints the study's lines; Tune's own table and banners would interleave with them.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        # Tune's result logs: JSON and CSV per trial (its TensorBoard logger is left out: it warns on every
        # report of a trial that ends with no validation report, whose val_bpb is inf).
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        scheduler = ASHAScheduler(**asha_settings(coordinator.space, self.settings.objectives)) if self.stops_trials else None
        tuner = tune.Tuner(
            tune.with_resources(run_on_node, {"cpu": self.cpus, "gpu": self.gpus}),
            tune_config=tune.TuneConfig(search_alg=StudySearcher(coordinator, self.threads), scheduler=scheduler,
                                        num_samples=-1, max_concurrent_trials=self.settings.workers, reuse_actors=False,
                                        trial_name_creator=tune_trial_name, trial_dirname_creator=tune_trial_name),
            run_config=tune.RunConfig(name=time.strftime("run-%Y%m%d-%H%M%S"), storage_path=os.path.abspath(os.path.join(coordinator.directory, "tune")),
                                      failure_config=tune.FailureConfig(max_failures=RETRIES), stop=StopOnSignal(coordinator),
                                      callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), Ticker(coordinator)], verbose=0))
        tuner.fit()

    @classmethod
    def check_options(cls, settings) -> None:
        pass  # the scheduler and per-trial resources are Tune's (__init__ checks the scheduler's name)

    def cancel(self, job: Job) -> None:
        pass  # Tune stops its own trials (when the experiment ends, every trial actor and its process go with it)

    def poll(self, job: Job) -> int | None:
        return None  # a trial Tune did not report as complete did not finish

    def shutdown(self) -> None:
        if self.started_ray:
            import ray

            ray.shutdown()


class StudySearcher(Searcher):
    """Tune's source of trials: the coordinator's ask (prepare_next) and tell (finish)."""

    def __init__(self, coordinator, threads: int):
        super().__init__()
        self.coordinator = coordinator
        self.threads = threads
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number (its entry in coordinator.jobs)
        self.asking = True

    def suggest(self, trial_id: str):
        c = self.coordinator
        c.tick()
        if c.stop_signal is not None:
            return self.FINISHED
        self.asking = self.asking and not c.sampling_over(c.rerunning)
        if self.asking:
            prepared = c.prepare_next(reruns=c.rerunning)
            if prepared is not None:
                job, _ = prepared
                self.numbers[trial_id] = job.number
                return {"directory": job.directory, "number": job.number, "threads": self.threads}
            self.asking = False
        if c.jobs:
            return None  # nothing new now: re-runs are queued once every sampled trial is told
        if c.next_phase():
            self.asking = True
            return self.suggest(trial_id)
        return self.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.coordinator.tick()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        c = self.coordinator
        number = self.numbers.pop(trial_id, None)
        if number not in c.jobs:
            return
        result = result or {}
        if error:
            code = -1  # the trial's process or node died RETRIES + 1 times
        elif "exit_code" in result:
            code = result["exit_code"]
        elif c.stop_signal is not None:
            self.numbers[trial_id] = number  # stopped with the study: the coordinator fails it and queues it again
            return
        else:  # stopped early by the scheduler: pruned at its last report
            job, _ = c.jobs[number]
            write_pruned(job.directory, result)
            code = 0
        job, trial = c.jobs.pop(number)
        c.finish(trial, job, code)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # the study's state is its Optuna storage; nothing of the searcher needs saving

    def __getstate__(self) -> dict:
        # Tune pickles its config (this searcher in it) into the experiment folder; the coordinator holds open
        # storage handles and is never restored from there.
        return {"threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, coordinator=None, numbers={}, asking=False)


class StopOnSignal(Stopper):
    """Ends the Tune experiment once the coordinator caught SIGINT or SIGTERM."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.coordinator is not None and self.coordinator.stop_signal is not None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.coordinator = None


class Ticker(Callback):
    """The coordinator's periodic work (progress line, heartbeats) on every step of Tune's loop."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self.coordinator is not None:
            self.coordinator.tick()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.coordinator = None


def tune_trial_name(trial) -> str:
    """Tune's name and folder for a trial: the study's trial number (not the config, which holds a path)."""
    return f"trial-{trial.config['number']:04d}"


def write_pruned(directory: str, last: dict) -> None:
    """The result of a trial the scheduler stopped, as the trial process writes one for the Optuna pruner."""
    reports = read_reports(directory)
    report = last.get("report", len(reports))
    reason = f"stopped by Tune's ASHA at report {report}" + (f" (val bpb {last['val_bpb']:.4f})" if "val_bpb" in last else "")
    with open(os.path.join(directory, RESULT_FILE + ".tmp"), "w", encoding="utf-8") as f:
        json.dump({"status": "pruned", "reports": reports, "reason": reason}, f)
    os.replace(os.path.join(directory, RESULT_FILE + ".tmp"), os.path.join(directory, RESULT_FILE))


def _unniced_trial_setup() -> None:
    trial_process_setup()
    try:  # Ray starts its workers at a low priority; the trial is the work, not a background task
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:  # lowering niceness needs privileges: the trial keeps Ray's
        pass


def run_on_node(config: dict) -> None:
    """Tune's trainable: the trial process on this node, its validation reports passed on to Tune."""
    import ray
    from ray import tune

    directory = config["directory"]
    if not os.path.isfile(os.path.join(directory, REQUEST_FILE)):
        raise RuntimeError(f"{directory} is not visible on node {socket.gethostname()}: the tune backend needs the "
                           f"study's results folder on a filesystem every node shares")
    for name in os.listdir(directory):  # a retry (its node died) starts from the request alone
        path = os.path.join(directory, name)
        if name == REQUEST_FILE:
            continue
        if os.path.isdir(path) and not os.path.islink(path):  # a script trial's script may write folders (logs/, ...)
            shutil.rmtree(path)
        else:
            os.remove(path)
    env = worker_env(config["threads"], {"PGOLF_NODE": ray.get_runtime_context().get_node_id()})
    with open(os.path.join(directory, WORKER_LOG), "wb") as log:
        process = subprocess.Popen(worker_command(directory), stdout=log, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=_unniced_trial_setup)
    sent, last = 0, (0, math.inf)
    try:
        while True:
            code = process.poll()
            reports = read_reports(directory)
            for index, bpb in reports[sent:]:
                tune.report({"val_bpb": bpb, "report": index})
                last = (index, bpb)
            sent = len(reports)
            if code is not None:
                break
            time.sleep(0.2)
    finally:
        if process.poll() is None:  # stopped by Tune (the scheduler, the study's end): the trial goes too, every rank of it
            end_process_group(process)
    # Every result carries the scheduler's metric (Tune checks it); the exit code tells the searcher it ended.
    tune.report({"exit_code": code, "report": last[0], "val_bpb": last[1]})
