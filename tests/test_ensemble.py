"""Top-k ensemble of method A's search trials, on synthetic features and a hand-made study."""

import json
import math

import jax
import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from bt_jax.method_a import ensemble
from bt_jax.config import base_config
from bt_jax.reporting import metrics, report
from bt_jax.train import head

N, N_TEST = 90, 30
DISTS = {"backbone": CategoricalDistribution(("a", "b")),
         "units": CategoricalDistribution((8,)),
         "lr": FloatDistribution(1e-4, 1e-1, log=True),
         "batch_size": CategoricalDistribution((16,)),
         "optimizer": CategoricalDistribution(("adam", "sgd")),
         "dropout": FloatDistribution(0.0, 0.5)}
# (value, backbone, lr, optimizer, dropout); by value: trials 1, 3, 2, 0, 4 (ties: lower number)
TRIALS = [(0.60, "a", 1e-2, "adam", 0.1), (0.90, "b", 3e-2, "adam", 0.0),
          (0.70, "a", 5e-2, "sgd", 0.2), (0.80, "a", 1e-2, "adam", 0.3),
          (0.60, "b", 2e-2, "adam", 0.1)]


def _config():
    c = base_config()
    c.train.epochs, c.train.patience = 4, 2
    c.eval.bootstrap = 200
    return c


def _study(trials=TRIALS):
    study = optuna.create_study(direction="maximize")
    for value, bb, lr, opt, dp in trials:
        study.add_trial(optuna.trial.create_trial(
            params={"backbone": bb, "units": 8, "lr": lr, "batch_size": 16, "optimizer": opt,
                    "dropout": dp}, distributions=DISTS, value=value))
    # a failed trial never becomes a member
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = (np.arange(N) % 2).astype(np.int32)
    feats = {"a": rng.normal(size=(N, 12)).astype(np.float32) + labels[:, None] * 0.8,
             "b": rng.normal(size=(N, 6)).astype(np.float32) + labels[:, None] * 0.5}
    test = np.arange(N - N_TEST, N)
    return feats, labels, np.arange(0, 45), np.arange(45, N - N_TEST), test


@pytest.fixture(scope="module")
def top3(data):
    feats, labels, tr, va, te = data
    return ensemble.ensemble_topk(_study(), feats, labels, tr, va, te, k=3, config=_config(),
                                  seed=7)


def test_members_are_topk_by_value(top3):
    assert [m.trial for m in top3.members] == [1, 3, 2]
    assert [m.value for m in top3.members] == [0.9, 0.8, 0.7]
    assert [m.seed for m in top3.members] == [7, 8, 9]
    assert [m.params["backbone"] for m in top3.members] == ["b", "a", "a"]
    assert top3.k_requested == 3 and top3.n_complete == 5 and top3.notes == []
    for m in top3.members:
        assert 0 <= m.val_acc <= 1 and math.isfinite(m.val_loss) and 0 <= m.best_epoch < 4


def test_prob_is_mean_of_independently_recomputed_members(data, top3):
    feats, labels, tr, va, te = data
    c = _config()
    probs = []
    for i, (_, bb, lr, opt, dp) in enumerate([TRIALS[1], TRIALS[3], TRIALS[2]]):
        hp = head.HeadHParams(units=8, dropout=dp, lr=lr, batch_size=16, optimizer=opt,
                              momentum=c.train.momentum, epochs=4, patience=2)
        res = head.fit_one(feats[bb], labels, tr, va, hp, jax.random.PRNGKey(7 + i))
        probs.append(np.asarray(head.predict_proba(res.params, feats[bb][te])))
    np.testing.assert_allclose(top3.single_prob, probs[0], atol=1e-6)
    np.testing.assert_allclose(top3.prob, np.mean(probs, axis=0), atol=1e-6)
    # members disagree, so the mean is not just member 0
    assert np.abs(top3.prob - top3.single_prob).max() > 1e-3
    assert top3.prob.shape == (N_TEST,) and ((top3.prob >= 0) & (top3.prob <= 1)).all()


def test_k_larger_than_completed_uses_all(data):
    feats, labels, tr, va, te = data
    ens = ensemble.ensemble_topk(_study(TRIALS[:2]), feats, labels, tr, va, te, k=5,
                                 config=_config(), seed=7)
    assert [m.trial for m in ens.members] == [1, 0] and ens.n_complete == 2
    assert len(ens.notes) == 1 and "only 2 completed trials" in ens.notes[0]


def test_k_zero_and_missing_backbone_are_clear(data):
    feats, labels, tr, va, te = data
    with pytest.raises(ValueError, match="ensemble_k = 0"):
        ensemble.ensemble_topk(_study(), feats, labels, tr, va, te, k=0, config=_config(), seed=0)
    with pytest.raises(KeyError, match="backbone 'b'"):
        ensemble.ensemble_topk(_study(), {"a": feats["a"]}, labels, tr, va, te, k=2,
                               config=_config(), seed=0)


def test_report_section_and_metrics_json(data, top3, tmp_path):
    _, labels, _, _, te = data
    y = labels[te]
    c = _config()
    section, entry = ensemble.evaluate_ensemble(top3, y, out_dir=tmp_path / "eval" / "ensemble",
                                                class_names=("no", "yes"), config=c,
                                                synthetic=True)
    heading, body, images = section
    assert "top-3 ensemble" in heading and (tmp_path / "eval/ensemble/metrics.json").exists()
    assert all(p.exists() for p in map(type(tmp_path), images))
    d = metrics.paired_difference(y, top3.single_prob, top3.prob, threshold=0.5, n_boot=200,
                                  seed=c.seed)["metrics"]["accuracy"]
    assert entry["vs_single_best"]["metrics"]["accuracy"]["diff"] == pytest.approx(d["diff"])
    assert entry["beats_single_best"] == (d["diff"] > 0)
    assert entry["difference_distinguishable"] == (d["ci"][0] > 0 or d["ci"][1] < 0)
    sentence = entry["verdict"]
    assert sentence.startswith("The ensemble's test accuracy")
    assert f"on {N_TEST} test images" in sentence
    assert sentence in body and "| ROC AUC |" in body and "| 2 | 2 | a |" in body
    assert entry["test"]["accuracy"]["value"] == pytest.approx(
        np.mean((top3.prob >= 0.5) == y))
    report.write_metrics_json(tmp_path / "metrics.json", {"ensemble": entry})
    back = json.loads((tmp_path / "metrics.json").read_text())["ensemble"]
    assert back["k_used"] == 3 and [m["trial"] for m in back["members"]] == [1, 3, 2]
    assert back["verdict"] == sentence
    md = report.write_markdown_report(tmp_path / "report.md", title="t", sections=[section])
    assert sentence in md.read_text()


def _diff(d, lo, hi, a=0.8):
    return {"ci_level": 0.95, "metrics": {"accuracy": {"a": a, "b": a + d, "diff": d,
                                                       "ci": [lo, hi]}}}


@pytest.mark.parametrize("d,lo,hi,text,beats,dist", [
    (0.03, -0.04, 0.09, "0.030 higher [−0.040, 0.090]: not distinguishable", True, False),
    (0.10, 0.02, 0.17, "0.100 higher [0.020, 0.170]: the ensemble beats", True, True),
    (-0.10, -0.2, -0.01, "0.100 lower [−0.200, −0.010]: the ensemble is worse than",
     False, True),
    (0.0, 0.0, 0.0, "equals the single best trial's (0.800) [0.000, 0.000]: no difference",
     False, False),
    (0.05, math.nan, math.nan, "0.050 higher (no CI", True, False),
])
def test_verdict_wording(d, lo, hi, text, beats, dist):
    sentence, b, s = ensemble.verdict(_diff(d, lo, hi), 23, 5)
    assert text in sentence and sentence.endswith("on 23 test images (5 members).")
    assert (b, s) == (beats, dist)


def test_no_bootstrap_gives_point_differences(data, top3):
    _, labels, _, _, te = data
    c = _config()
    c.eval.bootstrap = 0
    diff = ensemble.compare(labels[te], top3.single_prob, top3.prob, config=c)
    acc = diff["metrics"]["accuracy"]
    y = labels[te]
    assert acc["diff"] == pytest.approx(np.mean((top3.prob >= 0.5) == y)
                                        - np.mean((top3.single_prob >= 0.5) == y))
    assert all(math.isnan(x) for x in acc["ci"])
