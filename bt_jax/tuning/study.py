"""Method A's hyper-parameter search: Optuna TPE over one study shared by any number of workers.

    study = tuning.run_search(config, workdir, objective, available_backbones=("resnet50v2",))
    tuning.best_trial_params(study)   # {backbone, units, lr, batch_size, optimizer, dropout}
    tuning.top_trials(study, 5)       # completed trials, best first (top-k ensemble)
    tuning.params_to_config(config, params)   # model.name + train.* set from a trial

`objective(params) -> (value, user_attrs)` returns the mean k-fold validation accuracy (maximised)
and JSON-serialisable extras (val AUC, per-fold accuracies, best epochs, ...) stored on the trial.

Storage: `config.search.storage` (any SQLAlchemy URL; PostgreSQL lets launch.py processes on many
machines share one study) or `sqlite:///{workdir}/search.db`; study `config.search.study_name` or
"{config.name}-search", created with load_if_exists, so relaunching with the same workdir resumes.

Exact count. `config.search.trials` is the number of finished (COMPLETE, or PRUNED with
`search.pruner` set) trials the study ends with. A worker
takes a cross-process lock (SQLite: fcntl on `search.lock` beside the db file; PostgreSQL:
`pg_advisory_xact_lock` on the same URL; other databases are refused), then counts finished +
RUNNING and only if that is below the plan asks for a new trial and samples its params, all before
releasing the lock. A trial only finishes from RUNNING, so finished trials never pass the plan,
and trial numbers (assigned by the storage in creation order) are unique. A worker whose free slots
are all taken by other workers' RUNNING trials waits (polling) until they finish, since one may
fail and free a slot; it returns once COMPLETE == plan.

Failures. An exception in the objective (or a bad return value) ends the trial as FAIL with user
attrs "error" and "traceback"; FAIL trials are kept but do not count toward the plan. A call of
`run_search` raises SearchError after `max_failures` (default: the plan) failures of its own, so a
broken objective cannot loop forever; relaunching after a fix resumes with every result kept.

Resume. Every trial carries user attr "worker" = "host:pid:process-start". Under the lock, a worker
fails RUNNING trials whose worker ran on this host (same hostname and pid namespace) and is gone
(user attr "interrupted"), at once, without touching live workers on the same database. Trials
of dead workers on other hosts are found by Optuna heartbeats (a thread beats every
`heartbeat_interval` s; `fail_stale_trials` after `grace_period` s); those end FAIL without attrs
(the storage refuses attrs on finished trials). A live worker whose trial was failed that way
drops its result on tell (logged), so the count stays exact.

Determinism. The TPE sampler of the trial filling slot s (= finished + RUNNING trials when it is
asked for) is seeded from (config.seed, s): one worker with a fixed seed proposes the same params
every run; a killed trial, failed on relaunch, frees its slot and is proposed again with the same
params (TPE ignores failed trials), so a resumed run ends as an uninterrupted one would (for a
deterministic objective); parallel workers never share a slot, so they never repeat each other's
random start-up trials.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from bt_jax import io
from bt_jax.tuning import storage as study_storage
from bt_jax.tuning.pruning import Reporter, make_pruner  # noqa: F401  (public API)
from bt_jax.tuning.space import (params_to_config, search_space,  # noqa: F401  (public API)
                                 seed_params, suggest)
from bt_jax.tuning.storage import SearchError, storage_url, study_name  # noqa: F401  (public API)

log = logging.getLogger(__name__)

RESERVED_ATTRS = ("worker", "error", "traceback", "interrupted", "pruned_after_epoch")


def _sampler(seed: int, number: int) -> optuna.samplers.TPESampler:
    trial_seed = int(np.random.SeedSequence([int(seed) % 2**32, number]).generate_state(1)[0])
    with study_storage.quiet_optuna():
        # constant_liar: parallel workers see each other's RUNNING trials and spread out.
        return optuna.samplers.TPESampler(seed=trial_seed, constant_liar=True)


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)   # what the plan counts


def _jsonable(value: Any) -> Any:
    def default(o):
        if hasattr(o, "tolist"):  # numpy / jax scalars and arrays
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")
    return json.loads(json.dumps(value, default=default))


def _check_result(result) -> tuple[float, dict]:
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
        raise TypeError(f"objective must return (value, user_attrs dict), got {result!r:.200}")
    value = float(result[0])
    if not math.isfinite(value):
        raise ValueError(f"objective returned a non-finite value {value}")
    reserved = sorted(set(result[1]) & set(RESERVED_ATTRS))
    if reserved:
        raise ValueError(f"objective user_attrs use reserved names {reserved}")
    return value, {str(k): _jsonable(v) for k, v in result[1].items()}


def _check_space(study: optuna.Study, space: dict) -> None:
    """Refuses to continue a study with another search space (TPE would mix the two)."""
    new = {k: optuna.distributions.distribution_to_json(d) for k, d in space.items()}
    old = study.user_attrs.get("search_space")
    if old is None:
        study.set_user_attr("search_space", new)
    elif old != new:
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)}
        raise SearchError(f"study {study.study_name!r} was made with another search space; "
                          f"changed (stored, now): {diff}. Every worker must use the same "
                          f"config.search and available backbones, or a new study_name")


# ---------------------------------------------------------------- the search

@dataclasses.dataclass
class _Session:
    """One worker's handle on the shared study."""
    study: optuna.Study
    storage: optuna.storages.RDBStorage
    study_id: int
    lock: Callable
    worker: str


def _open_study(config, workdir: Path, space: dict, heartbeat_interval: int,
                grace_period: int) -> _Session:
    url, name = storage_url(config, workdir), study_name(config)
    lock = study_storage.make_lock(url, name)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # Under the lock: two first workers must not both create the tables and the study.
    with lock(), study_storage.quiet_optuna():
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                             heartbeat_interval=heartbeat_interval,
                                             grace_period=grace_period)
        study_storage.tune_sqlite(storage, url)
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    load_if_exists=True, sampler=_sampler(config.seed, 0),
                                    pruner=make_pruner(config))
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise SearchError(f"study {name!r} in {url} minimises; method A maximises accuracy")
        _check_space(study, space)
    session = _Session(study, storage, storage.get_study_id_from_name(name), lock,
                       study_storage.worker_id())
    log.info("search %r in %s: %d trials planned, worker %s", name, url,
             int(config.search.trials), session.worker)
    return session


def _next_trial(s: _Session, config, available_backbones, planned: int):
    """Under the lock: (trial, trial_id, params) for a free slot, "done" when the study is
    complete, or None when the last slots are RUNNING elsewhere (one may still fail)."""
    with s.lock():
        study_storage.reap_dead_trials(s.study, s.storage, s.study_id)
        trials = s.study.get_trials(deepcopy=False)   # finished trials come from a cache
        done = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= planned:
            return "done"
        if done + running >= planned:
            return None
        # Seeded by the slot (complete + running), not the trial number: a trial killed and
        # failed is re-proposed with the same params on relaunch, so a resumed study ends
        # with the trials an uninterrupted one would have.
        s.study.sampler = _sampler(config.seed, done + running)
        seed = seed_params(config, available_backbones, done + running)
        with study_storage.quiet_optuna():
            if seed and not any(t.state == TrialState.WAITING for t in trials):
                s.study.enqueue_trial(seed)   # ask() takes it (we hold the lock)
            trial = s.study.ask()
        trial.set_user_attr("worker", s.worker)
        trial_id = s.storage.get_trial_id_from_study_id_trial_number(s.study_id, trial.number)
        s.storage.record_heartbeat(trial_id)  # only trials with a beat can go stale
        return trial, trial_id, suggest(trial, config, available_backbones)


def run_search(config, workdir: str | Path, objective: Callable[[dict], tuple[float, dict]], *,
               available_backbones: Sequence[str], progress: bool = True,
               max_failures: int | None = None, poll_s: float = 1.0,
               heartbeat_interval: int = 10, grace_period: int = 60,
               parallel: int = 1, objective_batch: Callable | None = None) -> optuna.Study:
    """Runs trials until the study holds `config.search.trials` COMPLETE ones; returns the study.

    parallel > 1: up to that many trials are asked at once (each takes its own slot, so
    the count stays exact) and `objective_batch([params, ...]) -> [(value, attrs), ...]`
    evaluates them together; if it raises, every trial of the batch ends FAIL.

    With `search.pruner` set, objective_batch is called with `report=` a `Reporter`, which
    it calls after each epoch; the trials it stopped end PRUNED, which count toward the
    plan like COMPLETE ones (Optuna's n_trials counts them too) but never rank as best."""
    if parallel > 1 and objective_batch is None:
        raise ValueError("run_search: parallel > 1 needs objective_batch")
    if objective_batch is None or parallel <= 1:
        objective_batch = lambda ps, **kw: [objective(p, **kw) for p in ps]  # noqa: E731
    space = search_space(config, available_backbones)
    planned = int(config.search.trials)
    max_failures = planned if max_failures is None else int(max_failures)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    s = _open_study(config, workdir, space, heartbeat_interval, grace_period)
    csv_path = workdir / "trials.csv"
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=planned, desc="trial", unit="trial", dynamic_ncols=True)
    failures, last_error = 0, ""
    try:
        while (batch := _next_trials(s, config, available_backbones, planned,
                                     max(1, parallel))) != "done":
            if not batch:
                _show(bar, s.study.get_trials(deepcopy=False))
                time.sleep(poll_s)
                continue
            errors = [e for e in _run_trials(s.study, s.storage, batch, objective_batch,
                                             heartbeat_interval) if e]
            if errors:
                failures, last_error = failures + len(errors), errors[-1]
            _show(bar, s.study.get_trials(deepcopy=False))
            trials_dataframe_csv(s.study, csv_path)
            if failures >= max_failures:
                raise SearchError(
                    f"{failures} trials failed in this run (max_failures={max_failures}); last "
                    f"error: {last_error}. Completed trials are kept: fix the objective and "
                    f"relaunch with the same workdir/storage to resume")
    finally:
        if bar is not None:
            bar.close()
        trials_dataframe_csv(s.study, csv_path)
    best = top_trials(s.study, 1)[0]
    log.info("search %r done: %d complete; best trial %d value %.4f params %s",
             s.study.study_name, planned, best.number, best.value, best.params)
    return s.study


def _next_trials(s: _Session, config, available_backbones, planned: int, n: int):
    """Up to n free slots as [(trial, trial_id, params)]; "done" when the study is complete;
    [] when the last slots are RUNNING elsewhere."""
    batch = []
    while len(batch) < n:
        nxt = _next_trial(s, config, available_backbones, planned)
        if nxt in (None, "done"):
            return "done" if nxt == "done" and not batch else batch
        batch.append(nxt)
    return batch


def _run_trials(study, storage, batch, objective_batch, heartbeat_interval) -> list[str]:
    """Runs and records a batch of trials; returns one error message per trial ("" when
    it completed)."""
    t0 = time.perf_counter()
    trials = [t for t, _, _ in batch]
    try:
        with contextlib.ExitStack() as stack:
            for _, trial_id, _ in batch:
                stack.enter_context(study_storage.heartbeat(storage, trial_id,
                                                            heartbeat_interval))
            params = [dict(p) for _, _, p in batch]
            reporter = None if isinstance(study.pruner, optuna.pruners.NopPruner) else Reporter(trials)
            results = objective_batch(params) if reporter is None else objective_batch(
                params, report=reporter)
            if not isinstance(results, (list, tuple)) or len(results) != len(batch):
                raise TypeError(f"objective_batch must return one result per trial "
                                f"({len(batch)}), got {results!r:.200}")
            checked = [_check_result(r) for r in results]
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        for trial in trials:
            _fail(study, trial, error)
        return [error] * len(trials)
    except BaseException as e:  # KeyboardInterrupt, SystemExit: record, then stop
        for trial in trials:
            with contextlib.suppress(Exception):
                trial.set_user_attr("interrupted", f"{type(e).__name__} in worker "
                                                   f"{trial.user_attrs.get('worker')}")
                study.tell(trial, state=TrialState.FAIL)
        raise
    seconds = (time.perf_counter() - t0) / len(batch)
    pruned = reporter.pruned if reporter is not None else {}
    for i, ((trial, _, params), (value, attrs)) in enumerate(zip(batch, checked)):
        try:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            if i in pruned:   # its value: the last score reported
                trial.set_user_attr("pruned_after_epoch", pruned[i])
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d %s pruned after epoch %d (%.4f so far)", trial.number,
                         params, pruned[i], value)
                continue
            study.tell(trial, value)
            log.info("trial %d %s -> %.4f (%.1f s)", trial.number, params, value, seconds)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was failed by another worker (stale heartbeat); result "
                        "dropped", trial.number)
    return [""] * len(batch)


def _fail(study, trial, error: str) -> None:
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr("error", error)
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        study.tell(trial, state=TrialState.FAIL)
    log.warning("trial %d %s failed: %s", trial.number, trial.params, error)


def _show(bar, trials: list[FrozenTrial]) -> None:
    if bar is None:
        return
    values = [t.value for t in trials if t.state == TrialState.COMPLETE]
    bar.n = sum(t.state in FINISHED for t in trials)
    if values:
        bar.set_postfix_str(f"best {max(values):.4f}", refresh=False)
    bar.refresh()


# ---------------------------------------------------------------- results

def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The `k` best COMPLETE trials, highest value first (ties: lower number first)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise SearchError(f"study {study.study_name!r} has no completed trial")
    return sorted(done, key=lambda t: (-t.value, t.number))[:k]


def best_trial_params(study: optuna.Study) -> dict:
    return dict(top_trials(study, 1)[0].params)


def trials_dataframe_csv(study: optuna.Study, path: str | Path) -> Path:
    """Writes every trial (all states) as one CSV row; atomic, so readers never see half a file."""
    path = Path(path)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    params = sorted({p for t in trials for p in t.params})
    attrs = sorted({a for t in trials for a in t.user_attrs if a != "traceback"})
    header = (["number", "state", "value", "datetime_start", "datetime_complete", "duration_s"]
              + [f"params_{p}" for p in params] + [f"user_attrs_{a}" for a in attrs])

    def cell(v):
        return json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)

    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        for t in trials:
            duration = t.duration.total_seconds() if t.duration is not None else None
            w.writerow([t.number, t.state.name, cell(t.value), cell(t.datetime_start),
                        cell(t.datetime_complete), cell(duration)]
                       + [cell(t.params.get(p)) for p in params]
                       + [cell(t.user_attrs.get(a)) for a in attrs])
    return io.atomic_write(path, write)
