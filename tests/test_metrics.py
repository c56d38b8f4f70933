"""Tests for bt_jax.reporting.metrics: sklearn parity, bootstrap CIs, degenerate inputs, Fig. 5."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from bt_jax.reporting import metrics as M


def _data(n=250, seed=1, decimals=2):
    """Imbalanced, overlapping classes; rounding makes tied scores (sklearn's tie rules matter)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.62).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    return y, np.round(p, decimals)


def _fig5():
    """Method A's test set: 7 negatives all right, 14 positives with one miss that still
    ranks above every negative (so AUC = AUPRC = 1 as reported)."""
    y = np.array([0] * 7 + [1] * 14)
    p = np.r_[np.linspace(0.05, 0.30, 7), 0.45, np.linspace(0.60, 0.99, 13)]
    return y, p


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.62])
def test_point_estimates_equal_sklearn(threshold):
    y, p = _data()
    r = M.classification_report(y, p, threshold=threshold, n_boot=0)
    pred = (p >= threshold).astype(int)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=[0, 1])
    for c, name in enumerate(("no", "yes")):
        block = r["per_class"][name]
        assert block["precision"]["value"] == pytest.approx(prec[c], abs=1e-12)
        assert block["recall"]["value"] == pytest.approx(rec[c], abs=1e-12)
        assert block["f1"]["value"] == pytest.approx(f1[c], abs=1e-12)
        assert block["support"] == sup[c]
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(y, pred, average=avg)
        assert r[avg]["precision"]["value"] == pytest.approx(ap, abs=1e-12)
        assert r[avg]["recall"]["value"] == pytest.approx(ar, abs=1e-12)
        assert r[avg]["f1"]["value"] == pytest.approx(af, abs=1e-12)
        assert r[avg]["support"] == len(y)
    assert r["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert r["balanced_accuracy"]["value"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert r["sensitivity"]["value"] == pytest.approx(rec[1], abs=1e-12)
    assert r["specificity"]["value"] == pytest.approx(rec[0], abs=1e-12)
    assert r["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert r["auprc"]["value"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert r["accuracy"]["ci"] is None  # n_boot=0: no CI


def test_bootstrap_ci_equals_looped_sklearn_on_the_same_resamples():
    # The vectorised resamples must be exactly sklearn with multiplicities as sample weights.
    y, p = _data(n=120, seed=3)
    n_boot = 200
    r = M.classification_report(y, p, n_boot=n_boot, seed=7)
    w = M.bootstrap_weights(y, n_boot, 7)
    assert w.shape == (n_boot, len(y))
    np.testing.assert_array_equal(w[:, y == 0].sum(1), (y == 0).sum())  # stratified
    np.testing.assert_array_equal(w[:, y == 1].sum(1), (y == 1).sum())
    pred = (p >= 0.5).astype(int)
    auc = [skm.roc_auc_score(y, p, sample_weight=wb) for wb in w]
    ap = [skm.average_precision_score(y, p, sample_weight=wb) for wb in w]
    f1 = [skm.f1_score(y, pred, average="macro", sample_weight=wb) for wb in w]
    acc = [skm.accuracy_score(y, pred, sample_weight=wb) for wb in w]
    for key, vals in (("roc_auc", auc), ("auprc", ap), ("accuracy", acc)):
        np.testing.assert_allclose(r[key]["ci"], np.percentile(vals, [2.5, 97.5]), atol=1e-12)
        assert r[key]["n_valid"] == n_boot
    np.testing.assert_allclose(r["macro"]["f1"]["ci"], np.percentile(f1, [2.5, 97.5]), atol=1e-12)


def test_ci_covers_point_and_narrows_with_more_data():
    small = M.classification_report(*_data(n=40, seed=5))
    large = M.classification_report(*_data(n=1000, seed=5))
    for r in (small, large):
        for key in M.SCALAR_METRICS:
            lo, hi = r[key]["ci"]
            assert lo <= r[key]["value"] <= hi, key
        for name in r["class_names"]:
            for m in M.CLASS_METRICS:
                e = r["per_class"][name][m]
                assert e["ci"][0] <= e["value"] <= e["ci"][1]
    for key in ("accuracy", "roc_auc", "auprc", "sensitivity"):
        assert np.diff(large[key]["ci"])[0] < 0.6 * np.diff(small[key]["ci"])[0], key


def test_deterministic_for_a_seed_and_seed_matters():
    y, p = _data()
    a = M.classification_report(y, p, seed=3)
    assert json.dumps(a) == json.dumps(M.classification_report(y, p, seed=3))
    assert a["roc_auc"]["ci"] != M.classification_report(y, p, seed=4)["roc_auc"]["ci"]


def test_thousand_resamples_give_a_stable_interval():
    """(Speed is a benchmark's business, not a test's: no wall-clock assert here.)"""
    y, p = _data(n=250)
    a = M.classification_report(y, p, n_boot=1000)["accuracy"]["ci"]
    b = M.classification_report(y, p, n_boot=1000)["accuracy"]["ci"]
    assert a == b and a[0] < a[1]  # seeded: the same interval twice, and a real one


def test_fig5_reproduced_and_its_ci_is_wide():
    r = M.classification_report(*_fig5())
    no, yes = r["per_class"]["no"], r["per_class"]["yes"]
    expected = {  # method A, Fig. 5: rows precision/recall/F1, columns 0, 1, macro, weighted
        "precision": (0.875, 1.0, 0.9375, 0.958333),
        "recall": (1.0, 0.928571, 0.964286, 0.952381),
        "f1": (0.933333, 0.962963, 0.948148, 0.953086),
    }
    for key, row in expected.items():
        got = [b[key]["value"] for b in (no, yes, r["macro"], r["weighted"])]
        assert got == pytest.approx(row, abs=1e-6), key
    assert (no["support"], yes["support"], r["macro"]["support"]) == (7, 14, 21)
    assert r["accuracy"]["value"] == pytest.approx(0.952381, abs=1e-6)
    assert r["roc_auc"]["value"] == 1.0 and r["auprc"]["value"] == 1.0
    assert r["confusion_matrix"] == [[7, 0], [1, 13]]
    lo, hi = r["accuracy"]["ci"]
    assert lo <= 0.87 and hi == 1.0  # one error in 21: "95%" is anything from ~86% to 100%
    assert r["sensitivity"]["ci"][0] < 0.8
    # 7/7 specificity: the bootstrap collapses to [1, 1]; Wilson keeps the honest width.
    assert r["specificity"]["ci"] == [1.0, 1.0]
    assert r["specificity"]["wilson"][0] == pytest.approx(0.6457, abs=1e-3)
    assert (r["specificity"]["k"], r["specificity"]["of"]) == (7, 7)
    table = M.table_markdown(r)
    assert "| Precision | 0.875 [" in table
    assert "| Support | 7 | 14 | 21 | 21 |" in table
    assert "| Accuracy | | | | 0.952 [0.86, 1.00] |" in table
    assert table.count("\n") == 8


def test_wilson_interval_known_values():
    assert M.wilson_interval(7, 7) == pytest.approx([0.6457, 1.0], abs=1e-4)
    assert M.wilson_interval(13, 14) == pytest.approx([0.6853, 0.9873], abs=1e-4)
    assert all(math.isnan(x) for x in M.wilson_interval(0, 0))


def test_single_class_gives_nan_with_reason_not_crash():
    y = np.ones(10, int)
    r = M.classification_report(y, np.linspace(0.3, 0.9, 10))
    assert math.isnan(r["roc_auc"]["value"]) and r["roc_auc"]["n_valid"] == 0
    assert "no cases of class 'no'" in r["undefined"]["roc_auc"]
    assert math.isnan(r["specificity"]["value"]) and "specificity" in r["undefined"]
    assert r["sensitivity"]["value"] == pytest.approx(0.7)
    assert r["weighted"]["recall"]["value"] == pytest.approx(0.7)  # empty class has no weight
    r0 = M.classification_report(np.zeros(6, int), np.full(6, 0.2))
    assert math.isnan(r0["auprc"]["value"]) and "auprc" in r0["undefined"]
    assert "predicted as class 'yes'" in r0["undefined"]["yes/precision"]


def test_undefined_resamples_are_dropped_and_counted():
    # One predicted positive among 30: many resamples never draw it -> precision 0/0.
    y = np.array([0] * 20 + [1] * 10)
    p = np.r_[np.full(20, 0.1), 0.9, np.full(9, 0.2)]
    r = M.classification_report(y, p, n_boot=500)
    e = r["per_class"]["yes"]["precision"]
    assert e["value"] == 1.0 and 0 < e["n_valid"] < 500
    assert r["accuracy"]["n_valid"] == 500


def test_no_bootstrap_means_no_ci():
    r = M.classification_report(*_fig5(), n_boot=0)
    assert r["accuracy"]["ci"] is None and r["n_boot"] == 0
    assert "| Accuracy | | | | 0.952 |" in M.table_markdown(r)


@pytest.mark.parametrize("y, p, arg", [
    (np.zeros((4, 1)), np.zeros(4), "y_true"),
    (np.zeros(4), np.zeros((4, 2)), r"prob.*prob\[:, 1\]"),
    (np.zeros(4), np.zeros(3), "lengths differ"),
    (np.array([0, 1, 2, 1]), np.full(4, 0.5), "y_true: labels must be 0 or 1"),
    (np.array([0, 1, 0, 1]), np.array([0.1, 1.2, 0.3, 0.4]), r"prob: values must lie in \[0, 1\]"),
    (np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.3, 0.4]), "prob: 1 value"),
    (np.array([], int), np.array([]), "y_true: empty"),
    (np.array(["a", "b"]), np.array([0.1, 0.2]), "y_true: expected numeric"),
])
def test_bad_inputs_raise_naming_the_argument(y, p, arg):
    with pytest.raises(ValueError, match=arg):
        M.classification_report(y, p)


@pytest.mark.parametrize("kwargs, arg", [
    ({"threshold": 1.5}, "threshold"), ({"n_boot": -1}, "n_boot"), ({"ci": 95}, "ci"),
    ({"class_names": ("a", "a")}, "class_names"),
])
def test_bad_options_raise_naming_the_option(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        M.classification_report(*_fig5(), **kwargs)


def test_threshold_for_sensitivity_matches_brute_force():
    y, p = _data(n=200, seed=9)
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        op = M.threshold_for_sensitivity(y, p, target)
        ok = [t for t in np.unique(p) if np.mean(p[y == 1] >= t) >= target]
        assert op["threshold"] == max(ok)
        assert op["sensitivity"] >= target
        assert op["specificity"] == pytest.approx(np.mean(p[y == 0] < op["threshold"]))
        r = M.classification_report(y, p, threshold=op["threshold"], n_boot=0)
        assert r["sensitivity"]["value"] == pytest.approx(op["sensitivity"])
    assert M.threshold_for_sensitivity(y, p, 1.0)["threshold"] == p[y == 1].min()
    # 9 of 10 positives exactly: floating point must not demand a 10th.
    y10, p10 = np.r_[np.ones(10, int), 0], np.r_[np.linspace(0.1, 1.0, 10), 0.05]
    assert M.threshold_for_sensitivity(y10, p10, 0.9)["threshold"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="target"):
        M.threshold_for_sensitivity(y, p, 0.0)
    with pytest.raises(ValueError, match="no positive"):
        M.threshold_for_sensitivity(np.zeros(3, int), np.full(3, 0.5), 0.9)


@pytest.mark.parametrize("kind", ["roc", "pr"])
def test_curve_band_brackets_the_curve(kind):
    y, p = _data(n=200, seed=2)
    grid, lo, hi = M.curve_band(y, p, kind=kind, n_boot=300)
    assert grid.shape == lo.shape == hi.shape == (101,)
    assert np.all(lo <= hi) and lo.min() >= 0 and hi.max() <= 1
    if kind == "roc":
        fpr, tpr, _ = skm.roc_curve(y, p)
        point = np.interp(grid, fpr, tpr)
    else:
        prec, rec, _ = skm.precision_recall_curve(y, p)
        env = np.maximum.accumulate(prec)  # sklearn's arrays run recall-descending
        point = np.array([env[rec >= g].max() for g in grid])
    inside = (point >= lo - 1e-9) & (point <= hi + 1e-9)
    assert inside.mean() > 0.9
    with pytest.raises(ValueError, match="both classes"):
        M.curve_band(np.ones(5, int), np.full(5, 0.5), kind=kind)


def test_paired_difference():
    y, pa = _data(n=150, seed=4)
    rng = np.random.default_rng(0)
    pb = np.clip(pa + rng.normal(0.03 * (2 * y - 1), 0.05), 0, 1)  # B: A nudged the right way
    d = M.paired_difference(y, pa, pb, n_boot=500)
    ra = M.classification_report(y, pa, n_boot=500)
    rb = M.classification_report(y, pb, n_boot=500)
    for key in ("accuracy", "roc_auc", "auprc", "sensitivity"):
        e = d["metrics"][key]
        assert e["a"] == ra[key]["value"] and e["b"] == rb[key]["value"]
        assert e["diff"] == pytest.approx(e["b"] - e["a"])
        assert e["ci"][0] <= e["diff"] <= e["ci"][1]
    # Pairing cancels shared case difficulty: narrower than the two separate CIs combined.
    wa, wb = (np.diff(r["roc_auc"]["ci"])[0] for r in (ra, rb))
    assert np.diff(d["metrics"]["roc_auc"]["ci"])[0] < 0.5 * math.hypot(wa, wb)
    assert d["metrics"]["roc_auc"]["frac_diff_le_0"] < 0.05
    same = M.paired_difference(y, pa, pa, n_boot=100)["metrics"]["accuracy"]
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="prob_b"):
        M.paired_difference(y, pa, pb[:-1])
    json.dumps(d, allow_nan=False)


def test_format_cell():
    assert M.format_cell({"value": 0.93333, "ci": [0.8, 1.0]}) == "0.933 [0.80, 1.00]"
    assert M.format_cell({"value": float("nan"), "ci": [float("nan")] * 2}) == "n/a"
    assert M.format_cell({"value": 0.5, "ci": None}) == "0.500"


def test_bootstrap_memory_does_not_grow_with_n():
    """Resamples x cases stays under MAX_BOOT_CELLS (never under 200 resamples), so the
    intervals of a 100,000-scan run cost ~160 MB, not 0.8 GB; small sets keep n_boot."""
    assert M.boot_count(1000, 250) == 1000 and M.boot_count(1000, 20_000) == 1000
    w = M.bootstrap_weights(np.arange(100_000) % 2, 1000, seed=0)
    assert w.shape == (200, 100_000) and w.size <= M.MAX_BOOT_CELLS
    assert np.all(w.sum(axis=1) == 100_000)
