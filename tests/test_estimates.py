"""Method A's repeated-CV estimate: what it reports for C classes."""

import numpy as np
from sklearn.metrics import cohen_kappa_score, recall_score

from bt_jax.method_a import estimates


def test_multiclass_cv_scores_give_kappa_and_each_class_recall():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    logits = rng.normal(size=(120, 4)) + 2.0 * np.eye(4)[y] * (rng.random(120) < 0.8)[:, None]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["glioma", "meningioma", "notumor", "pituitary"]
    s = estimates.scores(y, p, names, n_boot=200, seed=0)
    pred = p.argmax(axis=1)
    assert abs(s["kappa"]["value"] - cohen_kappa_score(y, pred)) < 1e-6
    want = recall_score(y, pred, average=None)
    assert list(s["recall"]) == names
    np.testing.assert_allclose([s["recall"][n]["value"] for n in names], want, atol=1e-6)
    lo, hi = s["kappa"]["ci"]
    assert lo < s["kappa"]["value"] < hi
    est = {"repeats": 2, "k": 5, "n_images": 120}
    for name in ("head", "logistic"):
        est[name] = {**s, "across_repeats": {"accuracy": {"mean": 0.8, "sd": 0.01}}}
    text = estimates.cv_section(est)[1]
    assert "Cohen's kappa" in text and "recall pituitary" in text
    assert estimates.cell(s["recall"]["glioma"]) in text


def test_binary_cv_scores_stay_accuracy_and_auc():
    y = np.array([0, 1] * 20)
    p = np.clip(y * 0.6 + 0.2 + np.linspace(-0.1, 0.1, 40), 0, 1)
    s = estimates.scores(y, p, ["no", "yes"], n_boot=0)
    assert set(s) == {"accuracy", "roc_auc"} and s["accuracy"]["value"] == 1.0
