"""Tumour type (#12): 3- and 4-class phantom runs of `search` and `staged` end to end, the
binary view against a hand computation, and the class settings' errors before any work."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_launch

from bt_jax import config as cfg
from bt_jax.data import dataset, discover, phantoms
from bt_jax.reporting import evaluation, metrics, multiclass

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import multiclass_search  # noqa: E402

TYPES4 = ("glioma", "meningioma", "no_tumour", "pituitary")


def _check_multiclass_report(rep: dict, names, n: int) -> None:
    assert rep["class_names"] == list(names) and rep["n"] == n
    cm = np.asarray(rep["confusion_matrix"])
    assert cm.shape == (len(names), len(names)) and cm.sum() == n
    assert cm.sum(axis=1).tolist() == [rep["per_class"][c]["support"] for c in names]
    for c in names:
        for m in ("recall", "specificity", "f1", "roc_auc", "auprc"):
            v = rep["per_class"][c][m]["value"]
            assert v is None or np.isnan(v) or 0 <= v <= 1, (c, m, v)
    for m in ("accuracy", "balanced_accuracy"):
        assert 0 <= rep[m]["value"] <= 1
    assert -1 <= rep["kappa"]["value"] <= 1


@pytest.fixture(scope="module")
def search4(tmp_path_factory):
    w = tmp_path_factory.mktemp("types4")
    r = run_launch(config="configs/multiclass_search.py:quick", workdir=w, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    return w, r


@pytest.mark.e2e
def test_four_class_search_end_to_end(search4):
    w, r = search4
    m = json.loads((w / "metrics.json").read_text())
    for key in ("final", "head_only"):
        _check_multiclass_report(m[key], TYPES4, m["n_test"])
        bv = m[key]["binary_view"]
        assert bv["negative_classes"] == ["no_tumour"] and bv["class_names"] == ["no_tumour", "tumour"]
        assert np.asarray(bv["confusion_matrix"]).sum() == m["n_test"]
    card = json.loads((w / "model.json").read_text())
    assert card["classes"] == list(TYPES4) and card["head"]["outputs"] == 4
    assert card["negative_classes"] == ["no_tumour"] and card["positive"] == ""
    val = json.loads((w / "validation.json").read_text())
    assert np.allclose(np.sum(val["prob"], axis=1), 1, atol=1e-5) and set(val["labels"]) <= {0, 1, 2, 3}
    report = (w / "report.md").read_text()
    assert "| glioma |" in report and "Binary view" in report and "SYNTHETIC" in report
    assert "Cohen's kappa" in report and "Cross-validated estimate" in report
    for png in ("eval/finetuned/confusion.png", "eval/finetuned/roc.png", "eval/finetuned/pr.png",
                "eval/finetuned/binary/roc.png"):
        assert (w / png).stat().st_size > 1000, png
    cv = m["cv"]
    assert 0 <= cv["head"]["accuracy"]["value"] <= 1 and 0 <= cv["logistic"]["roc_auc"]["value"] <= 1


@pytest.mark.e2e
def test_four_class_binary_view_equals_a_hand_computation(search4):
    """The report's tumour-vs-no-tumour metrics are those of 1 - P(no_tumour) of the model's
    own class probabilities on the test images."""
    from bt_jax import inference
    w, _ = search4
    c = multiclass_search.get_config("quick")
    ds = dataset.prepare_dataset(c, w, progress=False)
    model = inference.load_model(w)
    probs = inference.predict_array(model, ds.images[ds.splits.test])
    assert probs.shape == (len(ds.splits.test), 4)
    y = ds.labels[ds.splits.test]
    p_tumour = 1 - probs[:, TYPES4.index("no_tumour")]
    yb = (y != TYPES4.index("no_tumour")).astype(int)
    m = json.loads((w / "metrics.json").read_text())["final"]
    hand = metrics.classification_report(yb, p_tumour, n_boot=0)
    bv = m["binary_view"]
    for key in ("accuracy", "sensitivity", "specificity"):
        assert bv[key]["value"] == pytest.approx(hand[key]["value"], abs=1e-6), key
    assert bv["confusion_matrix"] == hand["confusion_matrix"]
    assert m["accuracy"]["value"] == pytest.approx(np.mean(probs.argmax(1) == y), abs=1e-6)


def test_folds_balance_every_class_within_one_image(tmp_path):
    root = phantoms.write_typed_phantoms(tmp_path / "data", n_per_class=13, size=64, seed=3,
                                         class_names=("glioma", "meningioma", "pituitary"))
    c = cfg.base_config()
    c.data.dir, c.data.classes, c.data.positive = str(root), (), ""
    c.preprocess.size, c.split.k = 32, 4
    ds = dataset.prepare_dataset(c, tmp_path / "w", progress=False)
    assert ds.classes == ("glioma", "meningioma", "pituitary") and ds.multiclass  # from the folder
    assert ds.labels.tolist() == ds.class_index.tolist()
    per_fold = np.array([np.bincount(ds.labels[ds.splits.fold_val(f)], minlength=3)
                         for f in range(ds.splits.k)])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 1).all(), per_fold


@pytest.mark.e2e
def test_three_class_search_without_a_binary_view(tmp_path):
    r = run_launch("--config.data.classes=glioma,meningioma,pituitary",
                   "--config.data.negative_classes=()", "--config.eval.cv_repeats=0",
                   "--config.search.nested=True", "--config.search.nested_trials=1",
                   config="configs/multiclass_search.py:quick", workdir=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    names = ("glioma", "meningioma", "pituitary")
    _check_multiclass_report(m["final"], names, m["n_test"])
    assert "binary_view" not in m["final"] and "cv" not in m
    nest = m["nested_cv"]  # nested CV, with C classes: every fold image predicted once
    files = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert nest["n_images"] == sum(f["status"] == "used" and f["split"].startswith("fold")
                                   for f in files)
    assert len(nest["outer_folds"]) == nest["k"] and 0 <= nest["accuracy"]["value"] <= 1
    assert "Nested cross-validation" in (tmp_path / "report.md").read_text()
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["head"]["outputs"] == 3 and card["negative_classes"] == []
    # predict gives class probabilities and leaves the tumour columns empty
    from bt_jax import inference
    model = inference.load_model(tmp_path)
    files = sorted((tmp_path / "synthetic_phantoms" / "pituitary").glob("*.png"))[:2]
    rows = inference.predict_files(model, files, batch_size=2, progress=False)
    assert [r["p_tumour"] for r in rows] == ["", ""] and all(r["predicted_class"] in names
                                                             for r in rows)


@pytest.mark.e2e
def test_three_class_staged_end_to_end(tmp_path):
    r = run_launch("--config.data.classes=glioma,no_tumour,pituitary", "--config.data.positive=",
                   "--config.data.negative_classes=no_tumour", "--config.augment.balance=augment2a",
                   config="configs/vgg19_staged.py:quick", workdir=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = json.loads((tmp_path / "stages.json").read_text())
    assert [x["stage"] for x in rows] == ["baseline", "stage1", "final"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    names = ("glioma", "no_tumour", "pituitary")
    for x in rows:
        rep = m["reports"][x["stage"]]
        _check_multiclass_report(rep, names, rep["n"])
        assert set(x["per_class_test_acc"]) == set(names)
        assert x["test_acc"] == pytest.approx(rep["accuracy"]["value"], abs=1e-6)
        assert "binary_view" in rep
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["head"]["num_classes"] == 3 and card["classes"] == list(names)
    assert "test AUC (macro, one vs rest)" in (tmp_path / "report.md").read_text()


def test_binary_view_of_a_report_matches_the_binary_report():
    rng = np.random.default_rng(0)
    names = ("glioma", "meningioma", "no_tumour", "pituitary")
    y = np.repeat(np.arange(4), 15)
    logits = rng.normal(size=(60, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    c = cfg.base_config()
    c.eval.bootstrap = 50
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        (_, body, _), rep = evaluation.evaluate_split(
            y, probs, out_dir=Path(d), title="t", class_names=names, config=c,
            synthetic=True, negative_classes=("no_tumour", "meningioma"))
    yb = (~np.isin(y, [1, 2])).astype(int)
    pb = 1 - probs[:, 1] - probs[:, 2]
    hand = metrics.classification_report(yb, pb, n_boot=0)
    from sklearn.metrics import roc_auc_score
    assert rep["binary_view"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(yb, pb))
    assert rep["binary_view"]["sensitivity"]["value"] == pytest.approx(hand["sensitivity"]["value"])
    assert rep["per_class"]["glioma"]["support"] == 15
    assert multiclass.binary_view(probs, names, ("no_tumour", "meningioma")) == pytest.approx(pb)
    assert "| true \\ predicted | glioma |" in body


@pytest.mark.parametrize("overrides, match", [
    ({"data.negative_classes": ("healthy",)}, r"data\.negative_classes.*'healthy'"),
    ({"data.positive": "yes"}, r"data\.positive.*set it to ''"),
    ({"data.negative_classes": TYPES4}, "every class"),
])
def test_class_settings_errors_name_the_key(overrides, match):
    c = multiclass_search.get_config("quick")
    for k, v in overrides.items():
        group, leaf = k.split(".")
        c[group][leaf] = v
    with pytest.raises(cfg.ConfigError, match=match):
        cfg.validate(c)


def test_one_class_folder_and_unknown_negative_class_fail_before_any_work(tmp_path):
    root = tmp_path / "one"
    (root / "glioma").mkdir(parents=True)
    (root / "glioma" / "a.png").write_bytes(b"x")
    c = cfg.base_config()
    c.data.dir, c.data.classes, c.data.positive = str(root), (), ""
    with pytest.raises(discover.DataLayoutError, match=r"\['glioma'\].*at least two classes"):
        dataset.prepare_dataset(c, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()
    # classes read from a folder are checked like configured ones
    data = phantoms.write_typed_phantoms(tmp_path / "t", n_per_class=6, size=64, seed=0,
                                         class_names=("glioma", "pituitary", "no_tumour"))
    c.data.dir, c.data.negative_classes = str(data), ("healthy",)
    with pytest.raises(cfg.ConfigError, match="healthy"):
        dataset.prepare_dataset(c, tmp_path / "w2", progress=False)
    r = run_launch("--config.data.negative_classes=healthy",
                   config="configs/multiclass_search.py:quick", workdir=tmp_path / "w3")
    assert r.returncode == 2 and "data.negative_classes" in r.stderr
    assert not (tmp_path / "w3" / "synthetic_phantoms").exists()
    assert not (tmp_path / "w3" / "manifest.json").exists()
