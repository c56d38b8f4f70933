"""Tests for bt_jax.reporting.multiclass: sklearn parity, bootstrap CIs, undefined values,
the markdown table, the binary view and the one-vs-rest plots."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from bt_jax.reporting import metrics as M
from bt_jax.reporting import multiclass as MC
from bt_jax.reporting import plots as P

NAMES = ("glioma", "meningioma", "pituitary", "no_tumour")


def _data(n=240, n_classes=4, seed=0, decimals=2):
    """Imbalanced, overlapping classes; rounding makes tied scores (sklearn's tie rules matter)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(n_classes, n, p=np.linspace(1, 2, n_classes) / np.linspace(1, 2, n_classes).sum())
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.2
    p = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), decimals)
    return y, p / p.sum(1, keepdims=True)


def _check_against_sklearn(y, p, names):
    C = len(names)
    r = MC.multiclass_report(y, p, class_names=names, n_boot=0)
    pred = p.argmax(1)
    labels = list(range(C))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    onehot = label_binarize(y, classes=labels) if C > 2 else np.eye(2)[y]
    cm = skm.confusion_matrix(y, pred, labels=labels)
    for c, name in enumerate(names):
        b = r["per_class"][name]
        assert b["precision"]["value"] == pytest.approx(prec[c], abs=1e-12)
        assert b["recall"]["value"] == pytest.approx(rec[c], abs=1e-12)
        assert b["f1"]["value"] == pytest.approx(f1[c], abs=1e-12)
        assert b["support"] == sup[c]
        spec = skm.recall_score(y != c, pred != c)
        assert b["specificity"]["value"] == pytest.approx(spec, abs=1e-12)
        assert b["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]), abs=1e-12)
        assert b["auprc"]["value"] == pytest.approx(
            skm.average_precision_score(y == c, p[:, c]), abs=1e-12)
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(y, pred, labels=labels, average=avg,
                                                            zero_division=0)
        assert r[avg]["precision"]["value"] == pytest.approx(ap, abs=1e-12)
        assert r[avg]["recall"]["value"] == pytest.approx(ar, abs=1e-12)
        assert r[avg]["f1"]["value"] == pytest.approx(af, abs=1e-12)
        assert r[avg]["auprc"]["value"] == pytest.approx(
            skm.average_precision_score(onehot, p, average=avg), abs=1e-12)
        if C > 2:  # sklearn's "ovr" is multi-class only; for C = 2 both columns give one AUC
            assert r[avg]["roc_auc"]["value"] == pytest.approx(
                skm.roc_auc_score(y, p, multi_class="ovr", average=avg), abs=1e-12)
    assert r["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert r["balanced_accuracy"]["value"] == pytest.approx(
        skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert r["kappa"]["value"] == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-12)
    assert r["confusion_matrix"] == cm.tolist()
    assert np.allclose(r["confusion_matrix_normalised"], cm / cm.sum(1, keepdims=True))
    assert r["undefined"] == {}
    return r


@pytest.mark.parametrize("n_classes, seed", [(4, 0), (3, 1), (4, 2), (2, 3), (5, 4)])
def test_random_cases_equal_sklearn(n_classes, seed):
    y, p = _data(n_classes=n_classes, seed=seed)
    names = NAMES[:n_classes] if n_classes <= 4 else tuple(f"c{i}" for i in range(n_classes))
    _check_against_sklearn(y, p, names)


def test_hand_made_case_equals_sklearn_and_hand_counts():
    # 3 classes, 9 cases; argmax predictions: [0, 0, 1, 1, 1, 2, 2, 0, 1] (one tie 0.5/0.5 -> 0).
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    p = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.1, .8, .1], [.3, .6, .1],
                  [.1, .2, .7], [.2, .2, .6], [.5, .0, .5], [.1, .5, .4]])
    r = _check_against_sklearn(y, p, NAMES[:3])
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 1, 1]]
    assert r["accuracy"]["value"] == pytest.approx(5 / 9)
    g = r["per_class"]["glioma"]
    assert (g["precision"]["value"], g["recall"]["value"]) == pytest.approx((2 / 3, 2 / 3))
    assert g["specificity"]["value"] == pytest.approx(5 / 6)  # 1 of 6 others called glioma
    assert (g["specificity"]["k"], g["specificity"]["of"]) == (5, 6)


def test_bootstrap_cis_hold_the_point_estimate_and_are_proportions():
    y, p = _data(n=150, seed=5)
    r = MC.multiclass_report(y, p, class_names=NAMES, n_boot=400, seed=1)
    entries = [r[m] for m in MC.SCALAR_METRICS]
    entries += [r["per_class"][n][m] for n in NAMES for m in MC.CLASS_METRICS]
    entries += [r[a][m] for a in ("macro", "weighted") for m in MC.AVERAGED]
    for e in entries:
        lo, hi = e["ci"]
        assert lo <= e["value"] <= hi and e["n_valid"] == 400
        assert (0.0 <= lo and hi <= 1.0) or e is r["kappa"]
    assert -1.0 <= r["kappa"]["ci"][0] <= r["kappa"]["ci"][1] <= 1.0
    assert sum(map(sum, r["confusion_matrix"])) == len(y)
    assert np.allclose(np.sum(r["confusion_matrix_normalised"], 1), 1.0)
    assert r["ci_method"] == M.CI_METHOD
    json.dumps(r)  # JSON-serialisable as written


def test_resamples_are_stratified_and_reproducible():
    y, _ = _data(n=90, n_classes=4, seed=6)
    w = MC.stratified_weights(y, 4, 50, seed=3)
    for c in range(4):
        assert np.all(w[:, y == c].sum(1) == (y == c).sum())  # every resample keeps supports
    assert np.array_equal(w, MC.stratified_weights(y, 4, 50, seed=3))
    assert not np.array_equal(w, MC.stratified_weights(y, 4, 50, seed=4))


def test_bootstrap_equals_looped_sklearn_on_the_same_resamples():
    y, p = _data(n=80, n_classes=3, seed=7)
    r = MC.multiclass_report(y, p, class_names=NAMES[:3], n_boot=30, seed=2)
    w = MC.stratified_weights(y, 3, 30, seed=2)
    pred = p.argmax(1)
    f1 = [skm.f1_score(y, pred, average="macro", sample_weight=wi) for wi in w]
    auc = [skm.roc_auc_score(y == 1, p[:, 1], sample_weight=wi) for wi in w]
    assert r["macro"]["f1"]["ci"] == pytest.approx(np.percentile(f1, [2.5, 97.5]), abs=1e-12)
    assert r["per_class"]["meningioma"]["roc_auc"]["ci"] == pytest.approx(
        np.percentile(auc, [2.5, 97.5]), abs=1e-12)


def test_two_classes_agree_with_the_binary_report():
    rng = np.random.default_rng(8)
    y = (rng.random(120) < 0.6).astype(int)
    prob = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0), 2)
    prob = np.where(prob == 0.5, 0.51, prob)  # argmax ties at 0.5 go to class 0, >= 0.5 to 1
    b = M.classification_report(y, prob, class_names=("no", "yes"), n_boot=200, seed=4)
    r = MC.multiclass_report(y, np.stack([1 - prob, prob], 1), class_names=("no", "yes"),
                             n_boot=200, seed=4)
    for key in ("accuracy", "balanced_accuracy"):
        assert r[key]["value"] == pytest.approx(b[key]["value"], abs=1e-12)
        assert r[key]["ci"] == pytest.approx(b[key]["ci"], abs=1e-12)  # the very same resamples
    assert r["per_class"]["yes"]["roc_auc"]["value"] == pytest.approx(b["roc_auc"]["value"])
    assert r["per_class"]["yes"]["recall"]["value"] == pytest.approx(b["sensitivity"]["value"])
    assert r["per_class"]["yes"]["specificity"]["value"] == pytest.approx(b["specificity"]["value"])
    assert r["confusion_matrix"] == b["confusion_matrix"]


def test_class_never_predicted_gives_nan_with_reason():
    y, p = _data(n=120, n_classes=3, seed=9)
    p = p.copy()
    p[:, 2] = 0.0  # pituitary never wins the argmax
    p /= p.sum(1, keepdims=True)
    r = MC.multiclass_report(y, p, class_names=NAMES[:3], n_boot=100)
    pit = r["per_class"]["pituitary"]
    assert math.isnan(pit["precision"]["value"]) and pit["precision"]["n_valid"] == 0
    assert "no case was predicted as class 'pituitary'" in r["undefined"]["pituitary/precision"]
    assert pit["recall"]["value"] == 0.0 and pit["f1"]["value"] == 0.0  # defined: 0 / support
    assert math.isnan(r["macro"]["precision"]["value"]) and "macro/precision" in r["undefined"]
    assert not math.isnan(r["accuracy"]["value"]) and not math.isnan(r["kappa"]["value"])
    assert set(r["undefined"]) == {"pituitary/precision", "macro/precision", "weighted/precision"}


def test_class_absent_from_y_true_gives_nan_with_reason():
    y, p = _data(n=100, n_classes=3, seed=10)
    keep = y != 1
    r = MC.multiclass_report(y[keep], p[keep], class_names=NAMES[:3], n_boot=50)
    men = r["per_class"]["meningioma"]
    assert men["support"] == 0
    for m in ("recall", "roc_auc", "auprc"):
        assert math.isnan(men[m]["value"])
        assert "no cases of class 'meningioma'" in r["undefined"][f"meningioma/{m}"]
    assert math.isnan(r["balanced_accuracy"]["value"]) and "balanced_accuracy" in r["undefined"]
    assert all(math.isnan(x) for x in r["confusion_matrix_normalised"][1])
    assert "confusion_matrix_normalised/meningioma" in r["undefined"]
    assert not math.isnan(r["weighted"]["recall"]["value"])  # an empty class has no weight


def test_one_class_only_gives_nan_specificity_and_kappa():
    y = np.zeros(5, int)
    p = np.tile([0.7, 0.2, 0.1], (5, 1))
    r = MC.multiclass_report(y, p, class_names=NAMES[:3], n_boot=20)
    assert r["accuracy"]["value"] == 1.0
    assert "every case is of class 'glioma'" in r["undefined"]["glioma/specificity"]
    assert "glioma/roc_auc" in r["undefined"] and "chance agreement" in r["undefined"]["kappa"]


@pytest.mark.parametrize("y, p, match", [
    (np.zeros((3, 1)), np.full((3, 3), 1 / 3), "y_true: expected a 1-D"),
    (np.zeros(3), np.full(3, 0.5), r"probs: expected shape \(N, 3\).*classification_report"),
    (np.zeros(3), np.full((3, 4), 0.25), r"expected shape \(N, 3\).*got \(3, 4\)"),
    (np.zeros(2), np.full((3, 3), 1 / 3), "lengths differ"),
    (np.array([0, 3, 1]), np.full((3, 3), 1 / 3), r"in \[0, 3\), got \[3\]"),
    (np.array([0, 1.5, 1]), np.full((3, 3), 1 / 3), r"got \[1.5\]"),
    (np.zeros(3), np.array([[0.5, 0.5, 0.5]] * 3), "row 0 sums to 1.5"),
    (np.zeros(3), np.array([[2.0, -1.0, 0.0]] * 3), "not logits"),
    (np.zeros(3), np.array([[np.nan, 0.5, 0.5]] * 3), "NaN"),
    (np.zeros(0), np.zeros((0, 3)), "empty"),
])
def test_bad_inputs_raise_clear_errors(y, p, match):
    with pytest.raises(ValueError, match=match):
        MC.multiclass_report(y, p, class_names=NAMES[:3], n_boot=0)


def test_bad_arguments_raise():
    y, p = _data(n=30, n_classes=3)
    with pytest.raises(ValueError, match="class_names"):
        MC.multiclass_report(y, p, class_names=("a", "a", "b"))
    with pytest.raises(ValueError, match="n_boot"):
        MC.multiclass_report(y, p, class_names=NAMES[:3], n_boot=-1)
    with pytest.raises(ValueError, match="ci"):
        MC.multiclass_report(y, p, class_names=NAMES[:3], ci=95)


def test_table_markdown():
    y, p = _data(n=100, seed=11)
    r = MC.multiclass_report(y, p, class_names=NAMES, n_boot=100)
    t = MC.table_markdown(r)
    lines = t.splitlines()
    assert lines[0].startswith("| Class | Precision | Recall | Specificity | F1-score |")
    assert len(lines) == 2 + 4 + 2 + 1 + 3
    g = r["per_class"]["glioma"]
    assert f"| glioma | {M.format_cell(g['precision'])} | {M.format_cell(g['recall'])} |" in t
    assert t.count(f" | {len(y)} |") == 2  # macro and weighted support: every case
    assert f"- Cohen's kappa: {M.format_cell(r['kappa'])}" in t
    assert "- Balanced accuracy: " in t and "- Accuracy: " in t


def test_binary_view():
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0], [0.7, 0.1, 0.1, 0.1]])
    assert MC.binary_view(p, NAMES, ["no_tumour"]) == pytest.approx([0.6, 0.0, 0.9])
    assert MC.binary_view(p, NAMES, "no_tumour") == pytest.approx([0.6, 0.0, 0.9])
    assert MC.binary_view(p, NAMES, ["no_tumour", "pituitary"]) == pytest.approx([0.3, 0.0, 0.8])
    q = np.array([[0.0, 0.3, 0.7 + 1e-9]])  # rounding must not give P(tumour) < 0
    assert MC.binary_view(q, ("t", "a", "b"), ["a", "b"])[0] == 0.0
    with pytest.raises(ValueError, match=r"unknown class 'notumor'.*'no_tumour'"):
        MC.binary_view(p, NAMES, ["notumor"])
    with pytest.raises(ValueError, match="at least one"):
        MC.binary_view(p, NAMES, [])
    with pytest.raises(ValueError, match="not every class"):
        MC.binary_view(p, NAMES, list(NAMES))
    with pytest.raises(ValueError, match=r"expected shape \(N, 4\)"):
        MC.binary_view(p[:, :3], NAMES, ["no_tumour"])


def test_multiclass_plots_and_confusion_are_written(tmp_path):
    y, p = _data(n=120, seed=12)
    r = MC.multiclass_report(y, p, class_names=NAMES, n_boot=0)
    for path in (P.plot_roc_multiclass(y, p, NAMES, tmp_path / "roc.png", "ROC", note="SYNTHETIC"),
                 P.plot_pr_multiclass(y, p, NAMES, tmp_path / "pr.png", "PR"),
                 P.plot_confusion(r["confusion_matrix"], NAMES, tmp_path / "cm.png", "CM")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    keep = y != 2  # a class with no cases is listed as n/a, not drawn, and does not crash
    assert P.plot_roc_multiclass(y[keep], p[keep], NAMES, tmp_path / "roc2.png", "ROC").exists()
