"""Multi-class inference (issue #12): loading a C-class model, the predict CSV (p_<class>,
predicted_class, the binary view), thresholds from multi-class validation data, Grad-CAM of a
chosen class, and `evaluate` mapping external folders onto the classes or the binary view.

Models are random-init Lite0 written by hand (model.json + orbax checkpoint), independent of
the training pipelines; inputs are typed phantoms."""

import csv
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MODEL_SIZE as SIZE
from helpers import write_model_dir

from bt_jax import inference
from bt_jax.config import ConfigError
from bt_jax.data import discover, phantoms
from bt_jax.inference import gradcam as explain
from bt_jax.models import registry as mreg
from bt_jax.models.heads import Classifier, FlattenHead, Head
from bt_jax.reporting import metrics, multiclass

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import evaluate as evaluate_config  # noqa: E402
from configs import predict as predict_config  # noqa: E402

pytestmark = pytest.mark.e2e  # whole pipelines: `pytest -m e2e`

CLASSES = ("glioma", "meningioma", "pituitary", "no_tumour")


def make_model_dir(root: Path, *, classes=CLASSES, negative_classes=("no_tumour",),
                   head: str = "gap_dense", seed: int = 0, extra=None) -> Path:
    """A workdir as a training pipeline leaves it (model.json + best checkpoint), random init."""
    n = len(classes)
    if head == "flatten":
        card_head = {"type": "flatten", "hidden": [8], "dropout": 0.0, "num_classes": n}
        module = Classifier(backbone=mreg.get("efficientnet_lite0").make(),
                            head=FlattenHead(hidden=(8,), dropout=0.0, num_classes=n),
                            head_input="features")
    else:
        outputs = 1 if n == 2 else n
        card_head = {"type": "gap_dense", "units": 8, "dropout": 0.0, "outputs": outputs}
        module = Classifier(backbone=mreg.get("efficientnet_lite0").make(),
                            head=Head(8, 0.0, outputs=outputs))
    variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
    if head != "flatten":
        variables = spread_head(module, variables)
    negative = {"negative_classes": list(negative_classes)} if n > 2 else {}
    return write_model_dir(root, variables, head=card_head, classes=list(classes),
                           positive="" if n > 2 else classes[1], **{**(extra or {}), **negative})


def spread_head(module, variables):
    """Random-init Lite0 features are ~1e-5 and nearly equal for every image, so every
    class would get 1/C: the head is rescaled (on a random calibration batch) so that
    the probabilities and predicted classes differ from image to image."""
    v = jax.tree.map(np.asarray, variables)
    cal = np.random.default_rng(1).uniform(0, 1, (16, SIZE, SIZE, 3)).astype(np.float32)
    _, out = module.apply(v, cal, train=False)
    pooled, h = np.asarray(out["pre_logits"]), v["params"]["head"]
    h["hidden"]["kernel"] = h["hidden"]["kernel"] / pooled.std(axis=0).mean()
    h["hidden"]["bias"] = -(pooled.mean(axis=0) @ h["hidden"]["kernel"])
    logits, _ = module.apply(v, cal, train=False)
    h["out"]["bias"] = -np.asarray(logits).mean(axis=0)
    return v


def edit_card(src: Path, dst: Path, **changes) -> Path:
    """A copy of a model workdir with model.json fields replaced."""
    shutil.copytree(src, dst)
    card = json.loads((dst / "model.json").read_text())
    card.update(changes)
    (dst / "model.json").write_text(json.dumps(card, indent=1))
    return dst


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("mc_model"))


@pytest.fixture(scope="module")
def typed_dir(tmp_path_factory):
    return phantoms.write_typed_phantoms(tmp_path_factory.mktemp("typed"), n_per_class=3,
                                         size=64, seed=0)


def _x(n=6, seed=3):
    return np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def _read_csv(path):
    with open(path) as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_loaded_model_gives_softmax_rows(model, model_dir):
    assert model.multiclass and model.classes == CLASSES
    assert model.negative_classes == ("no_tumour",) and model.has_binary_view
    x = _x()
    probs = inference.predict_array(model, x, batch_size=4)  # two batches, the last padded
    logits, _ = model.module.apply(model.variables, x, train=False)
    assert probs.shape == (6, 4)
    np.testing.assert_allclose(probs, jax.nn.softmax(logits, axis=-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.binary_view(probs), 1.0 - probs[:, 3], atol=1e-6)
    assert inference.predict_array(model, x[:0]).shape == (0, 4)
    assert model.class_label("pituitary") == 2
    with pytest.raises(ValueError, match="'astrocytoma' is not a class"):
        model.class_label("astrocytoma")


def test_flatten_head_multiclass(tmp_path):
    m = inference.load_model(make_model_dir(tmp_path / "b", head="flatten", classes=CLASSES[:3],
                                            negative_classes=()))
    probs = inference.predict_array(m, _x(2))
    assert probs.shape == (2, 3) and not m.has_binary_view
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_card_errors(model_dir, tmp_path):
    bad = edit_card(model_dir, tmp_path / "outputs",
                    head={"type": "gap_dense", "units": 8, "dropout": 0.0, "outputs": 3})
    with pytest.raises(inference.ModelCardError, match=r"head.outputs': expected 4 for 4 classes"):
        inference.load_model(bad)
    bad = edit_card(model_dir, tmp_path / "neg", negative_classes=["normal"])
    with pytest.raises(inference.ModelCardError, match="negative_classes"):
        inference.load_model(bad)


def test_predict_pipeline_writes_class_columns(model_dir, model, typed_dir, tmp_path, capsys):
    c = predict_config.get_config("quick")
    c.checkpoint, c.inputs, c.explain = str(model_dir), str(typed_dir / "*" / "*.png"), True
    c.threshold.value = 0.6
    summary = inference_run(c, tmp_path / "out")
    fields, rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert tuple(fields) == ("file", "p_glioma", "p_meningioma", "p_pituitary", "p_no_tumour",
                             "predicted_class", *inference.CSV_FIELDS[1:])
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    p = np.array([[float(r[f"p_{k}"]) for k in CLASSES] for r in rows])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert [r["predicted_class"] for r in rows] == [CLASSES[i] for i in p.argmax(axis=1)]
    t = np.array([float(r["p_tumour"]) for r in rows])
    np.testing.assert_allclose(t, 1.0 - p[:, 3], atol=2e-6)
    assert [r["decision"] for r in rows] == ["tumour" if v >= 0.6 else "no_tumour" for v in t]
    assert all(float(r["threshold"]) == 0.6 for r in rows)
    assert summary["n_predicted"] == 12 and summary["n_positive"] == int((t >= 0.6).sum())
    assert sum(summary["predicted_class_counts"].values()) == 12
    assert len(list((tmp_path / "out" / "gradcam").glob("*.png"))) == 12
    out = capsys.readouterr().out
    assert "predicted" in out and rows[0]["predicted_class"][:16] in out
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<th>predicted_class</th>" in page and "the class named in each title" in page


def inference_run(config, workdir):
    from bt_jax import pipelines
    return pipelines.run(config, workdir)


def test_no_negative_classes_leaves_binary_columns_empty(model_dir, typed_dir, tmp_path):
    wd = edit_card(model_dir, tmp_path / "m", negative_classes=[])
    c = predict_config.get_config("quick")
    c.checkpoint, c.inputs = str(wd), str(typed_dir / "glioma")
    summary = inference_run(c, tmp_path / "out")
    _, rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert all(r["p_tumour"] == "" and r["decision"] == "" and r["predicted_class"] for r in rows)
    assert summary["n_predicted"] == 3 and summary["negative_classes"] == []
    c.threshold.target_sensitivity = 0.9
    with pytest.raises(inference.ModelCardError, match="negative_classes' is empty"):
        inference_run(c, tmp_path / "out2")


def test_threshold_from_multiclass_validation(model_dir, tmp_path):
    wd = edit_card(model_dir, tmp_path / "wd", validation="validation.json")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    prob = rng.dirichlet(np.ones(4), len(labels))
    prob[np.arange(len(labels)), labels] += 1.0  # informative, rows still sum to 1 below
    prob /= prob.sum(axis=1, keepdims=True)
    (wd / "validation.json").write_text(json.dumps(
        {"source": "fold 0 validation", "classes": list(CLASSES), "labels": labels.tolist(),
         "prob": prob.tolist()}))
    m = inference.load_model(wd, target_sensitivity=0.9)
    tumour = 1.0 - prob[:, 3]
    op = metrics.threshold_for_sensitivity((labels != 3).astype(int), tumour, 0.9)
    assert m.threshold == pytest.approx(op["threshold"]) and m.threshold_info["sensitivity"] >= 0.9
    assert m.threshold_info["specificity"] == pytest.approx(op["specificity"])
    assert "n=24" in m.threshold_info["source"]
    # the same by the library's binary view
    np.testing.assert_allclose(multiclass.binary_view(prob, CLASSES, ["no_tumour"]), tumour)
    no_neg = edit_card(wd, tmp_path / "noneg", negative_classes=[])
    with pytest.raises(inference.ModelCardError, match="negative_classes' is empty"):
        inference.load_model(no_neg, target_sensitivity=0.9)
    v = json.loads((wd / "validation.json").read_text())
    v["prob"] = tumour.tolist()
    (wd / "validation.json").write_text(json.dumps(v))
    with pytest.raises(inference.ModelCardError, match=r"validation.json: field 'prob'"):
        inference.load_model(wd, target_sensitivity=0.9)


def test_gradcam_of_a_chosen_class(model):
    x = _x(4, seed=7)
    probs = inference.predict_array(model, x)
    cams = {k: np.asarray(explain.make_gradcam_fn(model.module, class_index=k)(model.variables, x)[0])
            for k in range(4)}
    default, p_cam = explain.make_gradcam_fn(model.module)(model.variables, x)
    np.testing.assert_allclose(p_cam, probs, rtol=1e-5, atol=1e-6)
    pred = probs.argmax(axis=1)
    for i in range(4):  # default: each image's predicted class
        np.testing.assert_allclose(default[i], cams[pred[i]][i], atol=1e-6)
    assert any(np.abs(cams[a] - cams[b]).max() > 1e-3 for a in range(4) for b in range(a))
    # a module target follows the chosen class too
    mod = [np.asarray(explain.make_gradcam_fn(model.module, "module:backbone/top_conv",
                                              class_index=k)(model.variables, x)[0])
           for k in (1, 2)]
    assert mod[0].shape == (4, SIZE, SIZE) and np.abs(mod[0] - mod[1]).max() > 1e-3


def test_binary_cotangent_unchanged_and_negative_class():
    one, two = jnp.zeros((3, 1)), jnp.zeros((3, 2))
    np.testing.assert_array_equal(explain.score_cotangent(one), np.ones((3, 1)))
    np.testing.assert_array_equal(explain.score_cotangent(two), np.tile([-1.0, 1.0], (3, 1)))
    np.testing.assert_array_equal(explain.score_cotangent(one, 1), np.ones((3, 1)))
    np.testing.assert_array_equal(explain.score_cotangent(two, 0), np.tile([1.0, -1.0], (3, 1)))
    logits = jnp.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    np.testing.assert_array_equal(explain.score_cotangent(logits), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(explain.score_cotangent(logits, 2), [[0, 0, 1], [0, 0, 1]])


def test_gradcam_class_setting(model_dir, typed_dir, tmp_path):
    c = predict_config.get_config("quick")
    c.checkpoint, c.inputs, c.explain = str(model_dir), str(typed_dir / "pituitary"), True
    c.predict.gradcam_class = "astrocytoma"
    with pytest.raises(ConfigError, match=r"predict.gradcam_class: 'astrocytoma' is not a class"):
        inference_run(c, tmp_path / "bad")
    assert not (tmp_path / "bad" / "predictions.csv").exists()
    c.predict.gradcam_class = "meningioma"
    summary = inference_run(c, tmp_path / "ok")
    assert summary["gradcam_class"] == "meningioma" and len(summary["gradcam"]) == 3


def _eval_config(model_dir, inputs, **external):
    c = evaluate_config.get_config("quick")
    c.eval.bootstrap = 20
    c.checkpoint, c.inputs = str(model_dir), str(inputs)
    for k, v in external.items():
        setattr(c.external, k, v)
    return c


def test_folder_mapping_and_errors(model, model_dir, typed_dir, tmp_path):
    from bt_jax.pipelines import evaluate
    ext = _eval_config(model_dir, typed_dir).external
    assert evaluate.folder_labels(typed_dir, model, ext) == (
        "classes", {"glioma": 0, "meningioma": 1, "no_tumour": 3, "pituitary": 2})
    renamed = tmp_path / "renamed"
    shutil.copytree(typed_dir, renamed)
    (renamed / "no_tumour").rename(renamed / "notumor")
    ext.class_map = ("notumor:no_tumour",)
    assert evaluate.folder_labels(renamed, model, ext)[1]["notumor"] == 3
    # unmappable: one error naming the folder, its sub-folders and the model's classes
    ext.class_map = ()
    with pytest.raises(discover.DataLayoutError) as e:
        evaluate.folder_labels(renamed, model, ext)
    msg = str(e.value)
    assert str(renamed) in msg and "notumor" in msg and str(list(CLASSES)) in msg
    assert "external.class_map" in msg
    ext.class_map = ("notumor:normal",)
    with pytest.raises(discover.DataLayoutError, match=r"unknown classes \['normal'\]"):
        evaluate.folder_labels(renamed, model, ext)
    ext.class_map = ("notumor",)
    with pytest.raises(ConfigError, match="folder:model class"):
        evaluate.folder_labels(renamed, model, ext)
    ext.class_map, ext.positive_classes = ("notumor:no_tumour",), ("glioma",)
    with pytest.raises(ConfigError, match="not both"):
        evaluate.folder_labels(renamed, model, ext)
    # a binary question needs negative classes
    no_neg = inference.load_model(edit_card(model_dir, tmp_path / "noneg", negative_classes=[]))
    ext.class_map, ext.negative_classes = (), ("notumor",)
    ext.positive_classes = ("glioma", "meningioma", "pituitary")
    assert evaluate.folder_labels(renamed, model, ext) == (
        "binary", {"glioma": 1, "meningioma": 1, "pituitary": 1, "notumor": 0})
    with pytest.raises(ConfigError, match="names no negative_classes"):
        evaluate.folder_labels(renamed, no_neg, ext)


def test_evaluate_unmappable_folder_fails_before_prediction(model_dir, typed_dir, tmp_path):
    ext = tmp_path / "site"
    shutil.copytree(typed_dir / "glioma", ext / "glioma")
    shutil.copytree(typed_dir / "glioma", ext / "astrocytoma")
    out = tmp_path / "eval"
    with pytest.raises(discover.DataLayoutError, match="astrocytoma"):
        inference_run(_eval_config(model_dir, ext), out)
    assert not (out / "predictions.csv").exists()


def _yes_no_folder(typed_dir, root):
    for cls in ("glioma", "pituitary"):
        for f in (typed_dir / cls).glob("*.png"):
            (root / "yes").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / "yes" / f.name)
    shutil.copytree(typed_dir / "no_tumour", root / "no")
    return root


def test_evaluate_binary_view_of_multiclass_model(model_dir, model, typed_dir, tmp_path):
    ext = _yes_no_folder(typed_dir, tmp_path / "yes_no")
    c = _eval_config(model_dir, ext, positive_classes=("yes",), negative_classes=("no",))
    out = tmp_path / "eval"
    m = inference_run(c, out)
    assert m["evaluation"] == "binary view" and m["class_mapping"] == {"yes": 1, "no": 0}
    assert m["results"]["all"]["n"] == 9 and m["results"]["all"]["class_names"] == [
        "no_tumour", "tumour"]
    _, rows = _read_csv(out / "predictions.csv")
    p = np.array([[float(r[f"p_{k}"]) for k in CLASSES] for r in rows])
    np.testing.assert_allclose([float(r["p_tumour"]) for r in rows], 1 - p[:, 3], atol=2e-6)
    assert {r["label"] for r in rows if r["class"] == "yes"} == {"1"}
    y = np.array([int(r["label"]) for r in rows])
    ref = metrics.classification_report(y, np.array([float(r["p_tumour"]) for r in rows]),
                                        threshold=model.threshold, n_boot=0,
                                        class_names=("no_tumour", "tumour"))
    assert m["results"]["all"]["accuracy"]["value"] == pytest.approx(ref["accuracy"]["value"])
    assert "binary view" in (out / "report.md").read_text()
    assert len(list((out / "gradcam").glob("*.png"))) == 2


def test_binary_model_on_a_typed_folder(typed_dir, tmp_path):
    wd = make_model_dir(tmp_path / "binary", classes=("no", "yes"))
    c = _eval_config(wd, typed_dir, positive_classes=("glioma", "meningioma", "pituitary"),
                     negative_classes=("no_tumour",))
    m = inference_run(c, tmp_path / "eval")
    assert m["class_mapping"] == {"glioma": 1, "meningioma": 1, "pituitary": 1, "no_tumour": 0}
    assert m["results"]["all"]["n"] == 12 and "evaluation" not in m
    fields, rows = _read_csv(tmp_path / "eval" / "predictions.csv")
    assert tuple(fields[:len(inference.CSV_FIELDS)]) == inference.CSV_FIELDS
    assert {r["decision"] for r in rows} <= {"yes", "no"}
    # mapped with class_map onto the binary model's own classes: the same labels
    from bt_jax.pipelines import evaluate
    c.external.positive_classes = c.external.negative_classes = ()
    c.external.class_map = ("glioma:yes", "meningioma:yes", "pituitary:yes", "no_tumour:no")
    assert evaluate.folder_labels(typed_dir, inference.load_model(wd), c.external) == (
        "binary", m["class_mapping"])
    c.external.class_map = ()
    with pytest.raises(discover.DataLayoutError, match=r"model classes \['no', 'yes'\]"):
        inference_run(c, tmp_path / "eval2")


def test_evaluate_multiclass_on_class_folders(model_dir, model, typed_dir, tmp_path):
    ext = tmp_path / "site"
    shutil.copytree(typed_dir, ext)
    (ext / "no_tumour").rename(ext / "notumor")
    c = _eval_config(model_dir, ext, class_map=("notumor:no_tumour",))
    out = tmp_path / "eval"
    m = inference_run(c, out)
    assert m["evaluation"] == "classes" and m["class_mapping"]["notumor"] == "no_tumour"
    rep = m["results"]["all"]
    assert rep["n"] == 12 and set(rep["per_class"]) == set(CLASSES)
    assert np.asarray(rep["confusion_matrix"]).sum() == 12
    fields, rows = _read_csv(out / "predictions.csv")
    assert "true_class" in fields and "p_glioma" in fields
    assert {r["true_class"] for r in rows if r["class"] == "notumor"} == {"no_tumour"}
    assert {r["label"] for r in rows if r["class"] == "notumor"} == {"3"}
    p = np.array([[float(r[f"p_{k}"]) for k in CLASSES] for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    assert rep["accuracy"]["value"] == pytest.approx(float((p.argmax(axis=1) == y).mean()))
