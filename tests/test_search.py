"""Tests of bt_jax.tuning in one process: counts, failures, determinism, resume, the space
(worker processes: tests/test_search_workers.py)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bt_jax import tuning
from bt_jax.tuning import storage as study_storage
from bt_jax.config import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from search_worker import BACKBONES, attrs, by_state, load_study, make_config, score  # noqa: E402


def _objective(fail_on_calls=()):
    calls = []

    def objective(params):
        calls.append(params)
        if len(calls) in fail_on_calls:
            raise ValueError(f"bad fold at call {len(calls)}")
        value = score(params)
        return value, attrs(params, value)
    return objective, calls


def test_basic_run_counts_failures_results_and_csv(tmp_path):
    c = make_config(trials=12, seed=3)
    objective, calls = _objective(fail_on_calls=(3, 7))
    # densenet121 has no weights here, xception is not in the config's list: neither is searched.
    study = tuning.run_search(c, tmp_path, objective, progress=False,
                              available_backbones=("resnet50v2", "vgg16", "xception"))
    states = by_state(study)
    assert len(states[TrialState.COMPLETE]) == 12 and len(states[TrialState.FAIL]) == 2
    assert set(states) == {TrialState.COMPLETE, TrialState.FAIL} and len(calls) == 14
    assert sorted(t.number for t in study.trials) == list(range(14))
    assert [t.user_attrs["error"] for t in states[TrialState.FAIL]] == [
        "ValueError: bad fold at call 3", "ValueError: bad fold at call 7"]
    assert "bad fold at call 3" in states[TrialState.FAIL][0].user_attrs["traceback"]

    for t in study.trials:
        p = t.params
        assert p["backbone"] in ("resnet50v2", "vgg16")
        assert p["units"] in (32, 64, 128, 256, 1024) and isinstance(p["units"], int)
        assert p["batch_size"] in (16, 32, 64) and p["optimizer"] in ("adam", "sgd")
        assert 1e-5 <= p["lr"] <= 1e-2 and 0.0 <= p["dropout"] <= 0.8
    for t in states[TrialState.COMPLETE]:
        assert t.value == pytest.approx(score(t.params))
        assert t.user_attrs["fold_accuracy"] == pytest.approx([t.value - 0.01, t.value + 0.01])
        assert t.user_attrs["worker"].rsplit(":", 2)[1] == str(os.getpid())

    values = [t.value for t in states[TrialState.COMPLETE]]
    top = tuning.top_trials(study, 5)
    assert [t.value for t in top] == sorted(values, reverse=True)[:5]
    assert tuning.best_trial_params(study) == top[0].params
    assert top[0].value == max(values) > sum(values) / len(values)

    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert [int(r["number"]) for r in rows] == list(range(14))
    assert sum(r["state"] == "FAIL" for r in rows) == 2
    fail_row = next(r for r in rows if r["state"] == "FAIL")
    assert fail_row["user_attrs_error"].startswith("ValueError: bad fold")
    best_row = rows[top[0].number]
    assert float(best_row["value"]) == pytest.approx(top[0].value)
    assert int(best_row["params_units"]) == top[0].params["units"]

    # Relaunching a finished study runs nothing.
    again, more = _objective()
    study2 = tuning.run_search(c, tmp_path, again, progress=False,
                               available_backbones=("resnet50v2", "vgg16", "xception"))
    assert more == [] and len(study2.trials) == 14


def test_parallel_batches_keep_the_exact_count_and_a_failed_batch_fails_each_trial(tmp_path):
    c = make_config(trials=10, seed=3)
    batches = []

    def objective_batch(ps):
        batches.append(len(ps))
        if len(batches) == 2:
            raise ValueError("device lost")
        return [(score(p), attrs(p, score(p))) for p in ps]
    study = tuning.run_search(c, tmp_path, None, progress=False, available_backbones=BACKBONES,
                              parallel=4, objective_batch=objective_batch)
    states = by_state(study)
    assert len(states[TrialState.COMPLETE]) == 10 and len(states[TrialState.FAIL]) == 4
    assert batches[:3] == [4, 4, 4] and sum(batches) == 14
    assert {t.user_attrs["error"] for t in states[TrialState.FAIL]} == {"ValueError: device lost"}
    for t in states[TrialState.COMPLETE]:
        assert t.value == pytest.approx(score(t.params))
    # The 4 params of a batch are 4 different proposals (each its own slot).
    first = sorted(study.trials, key=lambda t: t.number)[:4]
    assert len({tuple(sorted(t.params.items())) for t in first}) == 4
    with pytest.raises(ValueError, match="objective_batch"):
        tuning.run_search(c, tmp_path / "x", None, available_backbones=BACKBONES, parallel=2)
    with pytest.raises(tuning.SearchError, match="2 trials failed"):
        tuning.run_search(make_config(trials=3, seed=1), tmp_path / "y", None, progress=False,
                          available_backbones=BACKBONES, parallel=2, max_failures=2,
                          objective_batch=lambda ps: [(1.0, {})])


def test_same_seed_same_params_and_resume_continues_the_same_sequence(tmp_path):
    def params(workdir, trials, seed=0):
        objective, _ = _objective()
        study = tuning.run_search(make_config(trials, seed), workdir, objective,
                                  available_backbones=BACKBONES, progress=False)
        return [t.params for t in sorted(study.trials, key=lambda t: t.number)]

    fresh = params(tmp_path / "a", 8)
    assert params(tmp_path / "b", 4) == fresh[:4]
    # Extending the study (like a relaunch after a stop) proposes what one run would have.
    assert params(tmp_path / "b", 8) == fresh
    # another seed: the same first trial per backbone (seed_backbones), then other points
    b = len(BACKBONES)
    other = params(tmp_path / "c", b + 2, seed=1)
    assert other[:b] == fresh[:b] and other[b] != fresh[b] and other[b + 1] != fresh[b + 1]


def test_a_failed_trial_is_proposed_again_so_resume_equals_an_uninterrupted_run(tmp_path):
    objective, _ = _objective()
    fresh = tuning.run_search(make_config(6), tmp_path / "a", objective,
                              available_backbones=BACKBONES, progress=False)
    calls = []

    def dies_once(p):  # like a process killed during trial 2, failed on relaunch
        calls.append(p)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return objective(p)

    with pytest.raises(tuning.SearchError):
        tuning.run_search(make_config(6), tmp_path / "b", dies_once,
                          available_backbones=BACKBONES, progress=False, max_failures=1)
    resumed = tuning.run_search(make_config(6), tmp_path / "b", objective,
                                available_backbones=BACKBONES, progress=False)

    def complete(study):
        return [(t.params, t.value) for t in sorted(study.trials, key=lambda t: t.number)
                if t.state == TrialState.COMPLETE]
    assert len(resumed.trials) == 7 and complete(resumed) == complete(fresh)


def test_failure_cap_stops_a_broken_objective_and_a_fixed_one_resumes(tmp_path, capsys):
    c = make_config(trials=4)

    def broken(params):
        return float("nan"), {}

    with pytest.raises(tuning.SearchError, match=r"3 trials failed.*non-finite"):
        tuning.run_search(c, tmp_path, broken, available_backbones=BACKBONES,
                          progress=False, max_failures=3)
    study = load_study(c, tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert all("non-finite value nan" in t.user_attrs["error"] for t in study.trials)

    def reserved(params):
        return 0.5, {"worker": "me"}
    with pytest.raises(tuning.SearchError, match="reserved names"):
        tuning.run_search(c, tmp_path, reserved, available_backbones=BACKBONES,
                          progress=False, max_failures=1)

    fixed, _ = _objective()
    capsys.readouterr()
    study = tuning.run_search(c, tmp_path, fixed, available_backbones=BACKBONES, progress=True)
    states = by_state(study)
    assert len(states[TrialState.COMPLETE]) == 4 and len(states[TrialState.FAIL]) == 4
    bar = capsys.readouterr().err
    best = max(t.value for t in states[TrialState.COMPLETE])
    assert "trial" in bar and "4/4" in bar and f"best {best:.4f}" in bar


def test_space_checks(tmp_path):
    c = make_config(trials=2)
    with pytest.raises(tuning.SearchError, match=r"none of them has weights.*xception"):
        tuning.search_space(c, ("xception",))
    bad = make_config(trials=2)
    bad.search.lr_min = 0.1
    with pytest.raises(ConfigError, match="config.search.lr_min"):
        tuning.search_space(bad, BACKBONES)
    bad = make_config(trials=2)
    bad.search.optimizers = ("adam", "rmsprop")
    with pytest.raises(ConfigError, match="config.search.optimizers"):
        tuning.search_space(bad, BACKBONES)

    objective, _ = _objective()
    tuning.run_search(c, tmp_path, objective, available_backbones=BACKBONES, progress=False)
    c.search.trials = 3
    with pytest.raises(tuning.SearchError, match="another search space.*backbone"):
        tuning.run_search(c, tmp_path, objective, available_backbones=BACKBONES[:2],
                          progress=False)
    with pytest.raises(tuning.SearchError, match="no cross-process trial lock for 'mysql'"):
        c.search.storage = "mysql://u@127.0.0.1/db"
        tuning.run_search(c, tmp_path, objective, available_backbones=BACKBONES, progress=False)


def test_several_backbones_are_each_tried_first_at_the_train_head(tmp_path):
    c = make_config(trials=5)
    c.train.units, c.train.lr, c.train.dropout, c.train.batch_size = 1000, 1.0, 0.5, 48
    objective, calls = _objective()
    study = tuning.run_search(c, tmp_path / "a", objective, available_backbones=BACKBONES,
                              progress=False)
    first = sorted(study.trials, key=lambda t: t.number)[:len(BACKBONES)]
    want = {"units": max(c.search.units), "lr": c.search.lr_max, "dropout": 0.5,
            "batch_size": min(c.search.batch_sizes, key=lambda b: (abs(b - 48), b)),
            "optimizer": c.train.optimizer}
    assert [t.params["backbone"] for t in first] == list(c.search.backbones)
    assert all({k: t.params[k] for k in want} == want for t in first)
    assert len({tuple(sorted(p.items())) for p in calls}) == 5   # then TPE: new points
    # off, or a single backbone: TPE from the first trial
    assert tuning.seed_params(c, BACKBONES[:1], 0) is None
    c.search.seed_backbones = False
    assert tuning.seed_params(c, BACKBONES, 0) is None


def test_params_to_config():
    c = make_config(trials=2)
    p = {"backbone": "vgg16", "units": 64, "lr": 3e-4, "batch_size": 16, "optimizer": "sgd",
         "dropout": 0.25}
    t = tuning.params_to_config(c, p)
    assert (t.model.name, t.train.units, t.train.lr, t.train.batch_size, t.train.optimizer,
            t.train.dropout) == ("vgg16", 64, 3e-4, 16, "sgd", 0.25)
    assert c.model.name == "efficientnet_lite0" and c.train.units == 1024  # original untouched


@pytest.mark.filterwarnings("ignore:Heartbeat of storage",
                            "ignore::optuna.exceptions.ExperimentalWarning")
def test_stale_remote_trial_is_failed_and_a_live_workers_trial_is_waited_for(tmp_path):
    c = make_config(trials=3)
    storage = optuna.storages.RDBStorage(tuning.storage_url(c, tmp_path), heartbeat_interval=1,
                                         grace_period=1)
    study = optuna.create_study(storage=storage, study_name=tuning.study_name(c),
                                direction="maximize")
    remote = study.ask()  # a worker on another machine that stopped beating
    remote.set_user_attr("worker", "elsewhere:123:456")
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(tuning.study_name(c)), remote.number))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = study.ask()  # a live worker on this host, still training
        live.set_user_attr("worker", f"{study_storage.host()}:{sleeper.pid}:"
                                     f"{study_storage.process_start(sleeper.pid)}")
        time.sleep(1.5)
        objective, calls = _objective()
        done = threading.Event()
        thread = threading.Thread(target=lambda: (tuning.run_search(
            c, tmp_path, objective, available_backbones=BACKBONES, progress=False, poll_s=0.05,
            heartbeat_interval=1, grace_period=1), done.set()))
        thread.start()
        end = time.monotonic() + 30
        while len(calls) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(calls) == 2 and not done.is_set(), "must wait for the live worker's trial"
        study.tell(live, 0.5)
        thread.join(30)
        assert done.is_set()
    finally:
        sleeper.kill()
        sleeper.wait()
    trials = sorted(load_study(c, tmp_path).trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[1].value == 0.5 and len(calls) == 2
