"""Tests for bt_jax.reporting.plots and bt_jax.reporting.report: files written, values shown."""

import json
import math

import numpy as np
import pytest
from matplotlib import _pylab_helpers
from matplotlib.image import imread

from bt_jax.reporting import metrics as M
from bt_jax.reporting import plots as P
from bt_jax.reporting import report as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fig5():
    y = np.array([0] * 7 + [1] * 14)
    p = np.r_[np.linspace(0.05, 0.30, 7), 0.45, np.linspace(0.60, 0.99, 13)]
    return y, p


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)


def _history(epochs=12, stop=8, folds=None, seed=0):
    rng = np.random.default_rng(seed)
    base = {"train/loss": np.linspace(1.0, 0.2, epochs), "val/loss": np.linspace(1.1, 0.5, epochs),
            "train/accuracy": np.linspace(0.5, 0.95, epochs), "val/accuracy": np.linspace(0.5, 0.85, epochs)}
    out = {}
    for k, v in base.items():
        v = v if folds is None else v + 0.05 * rng.normal(size=(folds, epochs))
        v = np.array(v)
        v[..., stop:] = np.nan  # early stopping: NaN tail
        out[k] = v.tolist()
    return out


def _assert_png(path, expected):
    assert str(path) == str(expected)
    data = expected.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    assert not [p for p in expected.parent.iterdir() if p.name.startswith(".")]  # no temp files
    assert _pylab_helpers.Gcf.get_num_fig_managers() == 0  # no pyplot state


def _red_pixels(path):
    img = imread(path)[..., :3]
    return int(((img[..., 0] > 0.8) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)).sum())


def test_every_plot_writes_a_png(tmp_path):
    y, p = _data()
    r = M.classification_report(y, p, n_boot=0)
    calls = {
        "balance.png": lambda f: P.plot_class_balance({"no": 98, "yes": 155}, f, "Class balance"),
        "curves.png": lambda f: P.plot_curves(_history(), f, "Head", best_epoch=5),
        "curves_k.png": lambda f: P.plot_curves(_history(folds=5), f, "5 folds", best_epoch=[3, 4, 5, 6, 7]),
        "cm.png": lambda f: P.plot_confusion(r["confusion_matrix"], r["class_names"], f, "Test"),
        "roc.png": lambda f: P.plot_roc(y, p, f, "ROC", n_boot=200),
        "pr.png": lambda f: P.plot_pr(y, p, f, "PR", n_boot=200),
        "roc_plain.png": lambda f: P.plot_roc(y, p, f, "ROC"),
        "stages.png": lambda f: P.plot_stage_comparison(
            ["head", "block5 conv3+4", "block5", "blocks 4+5", "all"],
            {"val/loss": [0.6, 0.45, 0.42, 0.38, 0.4], "test/loss": [0.62, 0.5, 0.47, 0.36, 0.35],
             "val/accuracy": [0.74, 0.81, 0.82, 0.85, 0.85], "test/accuracy": [0.75, 0.8, 0.84, 0.87, np.nan]},
            f, "Stages", intervals={"test/accuracy": [[0.7, 0.8]] * 5}),
    }
    for name, call in calls.items():
        _assert_png(call(tmp_path / "sub" / name), tmp_path / "sub" / name)


def test_note_is_drawn(tmp_path):
    cm = [[7, 0], [1, 13]]
    plain = P.plot_confusion(cm, ["no", "yes"], tmp_path / "a.png", "Test")
    stamped = P.plot_confusion(cm, ["no", "yes"], tmp_path / "b.png", "Test", note="SYNTHETIC DATA")
    assert _red_pixels(plain) == 0  # Blues colormap, black text: nothing red without a note
    assert _red_pixels(stamped) > 100
    long_note = P.plot_curves(_history(), tmp_path / "c.png", "t", note="synthetic phantoms " * 5)
    assert _red_pixels(long_note) > 100


def test_curves_accept_keras_names_and_all_nan_folds(tmp_path):
    h = {"loss": [1.0, 0.5, np.nan], "val_loss": [1.2, 0.9, np.nan], "lr": [1e-3] * 3}
    _assert_png(P.plot_curves(h, tmp_path / "k.png", "keras"), tmp_path / "k.png")
    folds = np.full((3, 6), np.nan)
    folds[:, :2] = 0.5
    folds[0, :5] = 0.4  # one fold trains longer; epochs 6 are NaN for all folds
    _assert_png(P.plot_curves({"val/loss": folds}, tmp_path / "f.png", "f"), tmp_path / "f.png")


@pytest.mark.parametrize("call, match", [
    (lambda f: P.plot_curves({"lr": [1.0]}, f, "t"), "history: no plottable series"),
    (lambda f: P.plot_curves({"val/loss": np.zeros((2, 2, 2))}, f, "t"), r"\(folds, epochs\)"),
    (lambda f: P.plot_confusion([[1, 2, 3]], ["a", "b"], f, "t"), "cm: expected a square"),
    (lambda f: P.plot_roc(np.ones(4, int), np.full(4, 0.5), f, "t"), "needs both classes"),
    (lambda f: P.plot_pr([0, 1], [0.2, 1.3], f, "t"), "prob"),
    (lambda f: P.plot_stage_comparison(["a", "b"], {"val/loss": [1.0]}, f, "t"), r"metrics\['val/loss'\]"),
    (lambda f: P.plot_stage_comparison(["a"], {"val/loss": [1.0]}, f, "t", intervals={"val/loss": [1]}),
     "intervals"),
    (lambda f: P.plot_class_balance({}, f, "t"), "counts"),
    (lambda f: P.plot_class_balance({"no": 3}, str(f).replace(".png", ".jpg"), "t"), "path"),
])
def test_plot_errors_name_the_argument(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "x.png")


def test_confusion_handles_an_empty_row(tmp_path):
    _assert_png(P.plot_confusion(np.array([[0, 0], [2, 5]]), ["no", "yes"], tmp_path / "e.png", "t"),
                tmp_path / "e.png")


def test_metrics_json_is_strict_and_round_trips(tmp_path):
    r = M.classification_report(np.ones(8, int), np.linspace(0.2, 0.9, 8), n_boot=50)
    r["extra"] = {"np_float": np.float32(0.5), "np_int": np.int64(3), "arr": np.arange(3)}
    path = R.write_metrics_json(tmp_path / "out" / "metrics.json", r)
    text = path.read_text()

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    back = json.loads(text, parse_constant=no_constants)
    assert back["roc_auc"]["value"] is None and math.isnan(r["roc_auc"]["value"])
    assert back["extra"] == {"np_float": 0.5, "np_int": 3, "arr": [0, 1, 2]}
    assert back["confusion_matrix"] == r["confusion_matrix"]
    assert back["sensitivity"]["value"] == r["sensitivity"]["value"]
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
    with pytest.raises(TypeError, match="report_dict"):
        R.write_metrics_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_markdown_report_with_fig5_evaluation(tmp_path):
    y, p = _fig5()
    r = M.classification_report(y, p)
    cm_png = P.plot_confusion(r["confusion_matrix"], r["class_names"], tmp_path / "fig" / "cm.png", "t")
    section = R.evaluation_section(r, ["fig/cm.png"])
    out = R.write_markdown_report(tmp_path / "report.md", title="Method A replica", sections=[
        section, ("Training", "Some *text*.", [cm_png]), ("Notes", "no images")])
    md = out.read_text()
    assert md.startswith("# Method A replica\n")
    assert "## Test-set evaluation" in md and "## Training" in md and "## Notes" in md
    assert M.table_markdown(r) in md
    for cell in ("| Support | 7 | 14 | 21 | 21 |", M.format_cell(r["per_class"]["no"]["precision"]),
                 "0.875 [", "0.929 [", "0.952 [0.86, 1.00]", "| yes | 1 (FN) | 13 (TP) |",
                 "| no | 7 (TN) | 0 (FP) |", "(13/14; Wilson 0.69–0.99)", "(7/7; Wilson 0.65–1.00)"):
        assert cell in md, cell
    assert "n=21 (no 7, yes 14): the 95% bootstrap CI of accuracy spans 0.86–1.00 (Wilson 0.77–0.99)" in md
    assert "Zero-width CIs" in md and "roc_auc" in md
    assert md.count("![cm](fig/cm.png)") == 2  # the absolute path became relative
    spaced = tmp_path / "my figs" / "roc curve.png"
    P.plot_roc(y, p, spaced, "t")
    md2 = R.write_markdown_report(tmp_path / "r2.md", title="t", sections=[("h", "", [spaced])])
    assert "![roc curve](<my figs/roc curve.png>)" in md2.read_text()


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        R.write_markdown_report(tmp_path / "r.md", title="t", sections=[("h", "b", ["missing.png"])])
    with pytest.raises(ValueError, match=r"sections\[0\]"):
        R.write_markdown_report(tmp_path / "r.md", title="t", sections=["just a string"])
    assert not (tmp_path / "r.md").exists()


def test_evaluation_section_large_and_undefined():
    big = R.evaluation_section(M.classification_report(*_data(n=400), n_boot=200))
    assert "Small test set" not in big[1] and big[2] == []
    one = R.evaluation_section(M.classification_report(np.ones(8, int), np.linspace(0.2, 0.9, 8)))
    assert "| ROC AUC | | | | n/a |" in one[1]
    assert "roc_auc: y_true holds no cases of class 'no'" in one[1]
    none = R.evaluation_section(M.classification_report(*_fig5(), n_boot=0))
    assert "No bootstrap" in none[1]
    assert "the 95% Wilson interval of accuracy spans 0.77–0.99" in none[1]
