"""Method A end to end through launch.py (quick config, random-init backbone, phantoms)."""

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from bt_jax.config import base_config
from conftest import launch_quick_search, own_xla_cache
from bt_jax.data import dataset
from bt_jax.method_a import allocation, steps
from bt_jax.train.folds import make_fold_arrays, row_sources

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def finished(quick_search_run):
    return quick_search_run


@pytest.mark.e2e
def test_outputs(finished):
    w, r = finished
    m = json.loads((w / "metrics.json").read_text())
    assert m["synthetic"] is True and m["backbone"] == "efficientnet_lite0"
    for key in ("final", "head_only"):
        rep = m[key]
        assert 0 <= rep["accuracy"]["value"] <= 1 and len(rep["accuracy"]["ci"]) == 2
        assert np.asarray(rep["confusion_matrix"]).sum() == m["n_test"]
    for png in ("plots/class_balance.png", "plots/head_curves.png", "plots/finetune_curves.png",
                "eval/finetuned/confusion.png", "eval/finetuned/roc.png", "eval/finetuned/pr.png"):
        assert (w / png).stat().st_size > 1000, png
    report = (w / "report.md").read_text()
    assert "SYNTHETIC" in report and "Precision" in report
    card = json.loads((w / "model.json").read_text())
    assert card["backbone"] == "efficientnet_lite0" and (w / card["checkpoint"]).is_dir()
    # two classes: exactly the binary model card and metrics of before multi-class (#12)
    assert set(card["head"]) == {"type", "units", "dropout"} and "negative_classes" not in card
    assert card["positive"] == "yes" and card["classes"] == ["no", "yes"]
    assert "binary_view" not in m["final"] and m["final"]["positive"] == "yes"
    assert isinstance(json.loads((w / "validation.json").read_text())["prob"][0], float)
    assert "test accuracy" in r.stdout
    assert m["ensemble"]["k_used"] == 3 and (w / "eval/ensemble/roc.png").exists()
    # the primary estimate: repeated CV of the final setting, with the logistic baseline
    cv = m["cv"]
    assert cv["repeats"] == 2 and len(cv["per_repeat"]) == 2
    files = json.loads((w / "manifest.json").read_text())["files"]
    assert cv["n_images"] == sum(f["status"] == "used" and f["split"].startswith("fold")
                                 for f in files)
    for name in ("head", "logistic"):
        assert 0 <= cv[name]["accuracy"]["value"] <= 1 and len(cv[name]["roc_auc"]["ci"]) == 2
    assert "accuracy" in cv["head_minus_logistic"]
    assert "Cross-validated estimate" in report and "logistic regression" in report
    # calibration in every evaluation
    cal = m["final"]["calibration"]
    assert 0 <= cal["ece"]["value"] <= 1 and 0 <= cal["brier"]["value"] <= 1
    assert (w / "eval/finetuned/reliability.png").stat().st_size > 1000
    assert "expected calibration error" in report
    assert "ensemble" in report and (w / "report.html").stat().st_size > 10000
    # frozen vs fine-tuned on the same fold-0 validation images
    cmp = m["frozen_vs_finetuned"]
    assert cmp["n"] > 0 and 0 <= cmp["frozen"]["val_acc"] <= 1 and 0 <= cmp["finetuned"]["val_acc"] <= 1
    if cmp["best_epoch"] < 0:
        assert cmp["finetuned"] == cmp["frozen"]
    assert "Frozen vs fine-tuned on the same fold-0 validation images" in report


@pytest.mark.e2e
def test_study_has_planned_trials_and_csv(finished):
    w, _ = finished
    study = optuna.load_study(study_name="quickstart-search", storage=f"sqlite:///{w}/search.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(0 <= t.value <= 1 for t in done)
    assert all("val_auc" in t.user_attrs and len(t.user_attrs["fold_val_acc"]) == 3 for t in done)
    assert len((w / "trials.csv").read_text().splitlines()) == 4


@pytest.mark.e2e
def test_rerun_reads_the_feature_cache(finished):
    w, _ = finished
    first = json.loads((w / "timing.json").read_text())
    assert first["pipeline"] == "search" and first["compiled"] > 0 and first["seconds"] > 0
    assert any((w / "cache" / "jax").iterdir())  # the persistent compilation cache
    r = launch_quick_search(w, env=own_xla_cache())
    assert r.returncode == 0, r.stderr[-4000:]
    assert "reusing cached features" in r.stderr
    study = optuna.load_study(study_name="quickstart-search", storage=f"sqlite:///{w}/search.db")
    assert len(study.trials) == 3  # nothing re-run
    again = json.loads((w / "timing.json").read_text())
    assert again["cache_hits"] > 0 and again["compiled"] < first["compiled"]
    assert "loaded from the compilation cache" in r.stderr


def test_fold_training_rows_never_hold_held_out_copies(phantom_dir, tmp_path):
    c = base_config()
    c.data.dir = str(phantom_dir)
    c.preprocess.size = 32
    c.split.k = 3
    ds = dataset.prepare_dataset(c, tmp_path, progress=False)
    copies = steps.make_copy_set(c, ds)
    folds = make_fold_arrays(ds.splits, len(ds.labels), copies.union.source, copies.fold_rows)
    n = len(ds.labels)
    for f in range(3):
        rows = folds.train_idx[f][folds.train_mask[f]]
        src, _ = row_sources(rows, n, copies.union.source)
        assert not np.isin(src, ds.splits.fold_val(f)).any()
        assert not np.isin(src, ds.splits.test).any()
        cls = ds.labels[src]
        assert cls.sum() != len(cls) - cls.sum()  # augment2a: the minority now outnumbers


@pytest.mark.e2e
def test_parallel_trials_in_one_allocation_score_as_each_trial_alone(phantom_dir, tmp_path):
    """search.parallel_trials=4 with the whole space in one program: each trial's fold
    accuracies are those of the same setting trained alone in its exact allocation."""
    c = base_config()
    c.data.dir = str(phantom_dir)
    c.preprocess.size = 32
    c.split.k = 3
    c.search.backbones = ("efficientnet_lite0",)
    c.search.trials, c.search.parallel_trials, c.search.allocation = 4, 4, "space"
    c.search.units = (8, 24)
    c.search.batch_sizes = (16, 32)
    c.train.epochs = 3
    run = steps.prepare(c, tmp_path, c.search.backbones)
    assert [a.units for a in allocation.search_allocations(run, 1, run.folds)] == [24]
    c.search.allocation = "auto"     # a small space: one program even on a CPU
    assert [a.units for a in allocation.search_allocations(run, 1, run.folds)] == [24]
    c.search.units = (8, 64, 1024)   # a large one on a CPU: narrow widths share one per batch
    assert [(a.units, a.batch) for a in allocation.search_allocations(run, 1, run.folds)] == \
        [(64, 16), (64, 32)]
    assert [a.units for a in allocation.search_allocations(run, 4, run.folds)] == [1024]
    c.search.allocation = "exact"
    assert allocation.search_allocations(run, 1, run.folds) == ()
    c.search.units, c.search.allocation = (8, 24), "space"
    study = steps.run_study(run, c, tmp_path, progress=False)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and len({t.datetime_complete for t in done}) >= 1
    for t in done:
        alone = steps.cv_head(run, "efficientnet_lite0",
                              steps.head.HeadHParams.from_trial(t.params, c.train))
        np.testing.assert_allclose(t.user_attrs["fold_val_acc"], alone.val_acc_best, atol=1e-6)
        assert t.value == pytest.approx(alone.val_acc_mean, abs=1e-6)


@pytest.mark.e2e
def test_a_pruned_search_keeps_the_count_and_complete_trials_score_as_unpruned(phantom_dir,
                                                                               tmp_path):
    """search.pruner on method A's real objective: epoch-chunked head lanes, two trials per
    call; finished = COMPLETE + PRUNED = the plan, a COMPLETE trial's fold accuracies are
    those of its setting trained without pruning, a PRUNED one ran fewer epochs."""
    c = base_config()
    c.data.dir = str(phantom_dir)
    c.preprocess.size = 32
    c.split.k = 3
    c.search.backbones = ("efficientnet_lite0",)
    c.search.trials, c.search.parallel_trials = 10, 2
    c.search.pruner, c.search.prune_warmup_epochs = "successive_halving", 1
    c.search.units, c.search.batch_sizes = (8, 24), (16, 32)
    c.train.epochs, c.train.patience = 6, 6
    run = steps.prepare(c, tmp_path, c.search.backbones)
    study = steps.run_study(run, c, tmp_path, progress=False)
    states = {s: [t for t in study.trials if t.state == s] for s in optuna.trial.TrialState}
    done, pruned = states[optuna.trial.TrialState.COMPLETE], states[optuna.trial.TrialState.PRUNED]
    assert len(done) + len(pruned) == len(study.trials) == 10 and pruned and done
    for t in done:
        alone = steps.cv_head(run, "efficientnet_lite0",
                              steps.head.HeadHParams.from_trial(t.params, c.train))
        np.testing.assert_allclose(t.user_attrs["fold_val_acc"], alone.val_acc_best, atol=1e-6)
    for t in pruned:
        assert t.user_attrs["pruned_after_epoch"] < c.train.epochs
        assert max(t.user_attrs["best_epochs"]) < t.user_attrs["pruned_after_epoch"]
