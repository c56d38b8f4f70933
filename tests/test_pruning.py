"""A pruned search: head lanes in epoch chunks (same numbers as one call), trials stopped
by an Optuna pruner, PRUNED trials counted toward the plan, resume."""

import jax
import numpy as np
import pytest

from bt_jax.train import head
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_head import _blobs, _folds  # noqa: E402

HPS = [head.HeadHParams(units=16, dropout=0.2, lr=3e-3, batch_size=16, optimizer="adam",
                        epochs=6, patience=3),
       head.HeadHParams(units=8, dropout=0.0, lr=1e-5, batch_size=32, optimizer="sgd",
                        momentum=0.9, epochs=6, patience=2)]


def _fit(prune=None, lane_batch=None):
    x, y = _blobs(n=120, seed=3)
    return head.fit_trials(x, y, _folds(len(y), k=3, seed=3), HPS, jax.random.PRNGKey(4),
                           prune=prune, lane_batch=lane_batch)


def _same(a: head.FoldResults, b: head.FoldResults):
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))


@pytest.mark.parametrize("lane_batch", [1, 6])
def test_chunks_that_prune_nothing_equal_one_call(lane_batch):
    calls = []

    def never(epoch, scores, training):
        calls.append((epoch, scores.copy(), training.copy()))
        return np.zeros(len(scores), bool)
    whole, chunked = _fit(lane_batch=lane_batch), _fit(never, lane_batch=lane_batch)
    for a, b in zip(whole, chunked):
        _same(a, b)
    # one call per epoch but the last, each with every trial's mean best-so-far accuracy
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1)) and len(calls) <= 5
    for t, res in enumerate(whole):
        assert np.isfinite(calls[0][1][t]) and 0 <= calls[0][1][t] <= 1
        if not calls[-1][2][t]:   # finished: its score is its final objective
            assert calls[-1][1][t] == pytest.approx(res.val_acc_mean)


def test_a_stopped_trial_runs_no_further_epochs_and_the_others_are_untouched():
    def stop_second(epoch, scores, training):
        return np.array([False, epoch == 2])
    whole, pruned = _fit(), _fit(stop_second)
    _same(whole[0], pruned[0])
    assert (pruned[1].epochs_run <= 2).all() and (whole[1].epochs_run > 2).any()
    assert np.isnan(pruned[1].val_acc[:, 2:]).all()
    # restore-best within the epochs it ran
    np.testing.assert_array_equal(pruned[1].val_acc_best,
                                  pruned[1].val_acc[np.arange(3), pruned[1].best_epoch])


# ---- the study: PRUNED trials, the exact count, determinism ----------------------------

def _curve_objective(calls):
    """A trial's per-epoch score rises towards search_worker.score(params); reported after
    each of train.epochs epochs; a stopped trial returns its score so far."""
    from search_worker import attrs, score

    def objective_batch(ps, report=None):
        out = []
        for p in ps:
            final, stopped = score(p), False
            calls.append(p)
            value = final
            for epoch in range(1, 10):
                value = final * (1 - 0.5 ** epoch)
                if report is not None and report(epoch, np.array([value]), np.array([True]))[0]:
                    stopped = True
                    break
            out.append((value if stopped else final, attrs(p, final)))
        return out
    return objective_batch


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_pruned_trials_count_toward_the_plan_and_never_rank_best(tmp_path, pruner):
    from optuna.trial import TrialState
    from search_worker import BACKBONES, by_state, make_config, score
    from bt_jax import tuning

    def run(workdir):
        c = make_config(trials=24, seed=5)
        c.search.pruner, c.train.epochs = pruner, 10
        calls = []
        objective_batch = _curve_objective(calls)
        study = tuning.run_search(c, workdir, lambda p, **kw: objective_batch([p], **kw)[0],
                                  available_backbones=BACKBONES, progress=False)
        return study, calls
    study, calls = run(tmp_path / "a")
    states = by_state(study)
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len(states[TrialState.COMPLETE]) + len(states.get(TrialState.PRUNED, [])) == 24
    assert len(calls) == 24 and states.get(TrialState.PRUNED), "the pruner stopped nothing"
    for t in states[TrialState.PRUNED]:
        e = t.user_attrs["pruned_after_epoch"]
        assert t.value == pytest.approx(score(t.params) * (1 - 0.5 ** e))
        assert max(t.intermediate_values) == e
    best = tuning.top_trials(study, 1)[0]
    assert best.state == TrialState.COMPLETE and best.value == pytest.approx(score(best.params))
    # the same seed proposes and prunes the same trials
    again, _ = run(tmp_path / "b")
    assert [(t.params, t.state) for t in study.trials] == [(t.params, t.state)
                                                          for t in again.trials]


def test_pruner_values_are_checked():
    from bt_jax.config import ConfigError, base_config, validate
    c = base_config()
    c.search.pruner = "asha"
    with pytest.raises(ConfigError, match="search.pruner"):
        validate(c)
