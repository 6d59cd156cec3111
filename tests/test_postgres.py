"""PostgreSQL storage on a real server of the test's own: heartbeats and stale trials, and a database that is not there."""

import io
import time

import optuna
from optuna.trial import TrialState

from postgres import free_port
from search.coordinator import recover_stale
from search.study import open_storage
from test_search import MICRO, one_error_line, search


def test_a_trial_whose_coordinator_on_another_machine_went_silent_is_recovered_by_its_heartbeat(tmp_path, postgres_url):
    study = optuna.create_study(study_name="h", storage=open_storage(postgres_url, stale_seconds=1.0))
    silent, beating, never_beat = study.ask(), study.ask(), study.ask()
    for trial in (silent, beating):
        trial.set_user_attr("owner", "another-machine:4242:99")  # a process identity this machine cannot check
        study._storage.record_heartbeat(trial._trial_id)
    never_beat.set_user_attr("owner", "another-machine:4343:99")  # never beat (asked before heartbeats existed): left alone
    time.sleep(2.5)
    study._storage.record_heartbeat(beating._trial_id)
    out = io.StringIO()
    assert recover_stale(study, str(tmp_path), out=out) == 1
    states = {t.number: t.state for t in study.trials}
    assert states[silent.number] == TrialState.FAIL and states[beating.number] == TrialState.RUNNING
    assert states[never_beat.number] == TrialState.RUNNING
    assert "went silent" in study.trials[silent.number].user_attrs["reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == silent.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert recover_stale(study, str(tmp_path), out=out) == 0  # once: the retry is not queued twice


def test_an_unreachable_postgres_url_is_one_line_and_stores_nothing(tmp_path):
    url = f"postgresql://pgolf@127.0.0.1:{free_port()}/nothing"
    one_error_line(search("run", "--space", MICRO, "--study", "u", "--storage", url, results=tmp_path),
                   rf"cannot open storage {url}: .*")
    assert not (tmp_path / "u").exists()
