"""Export: the `export` pipeline's program and model.json, and docs/serving.md's standalone
loader run in a fresh Python process without bt_jax, matched against `predict`."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from helpers import head_scan, tiny_model_dir

from bt_jax import inference, pipelines
from bt_jax.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import export as export_config  # noqa: E402

MC_CLASSES = ["glioma", "meningioma", "no_tumour", "pituitary"]


def _export(model_dir, out, **settings):
    c = export_config.get_config()
    c.checkpoint = str(model_dir)
    for k, v in settings.items():
        group, _, leaf = k.rpartition(".")
        (c[group] if group else c)[leaf] = v
    return pipelines.run(c, out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A two-class model with a temperature (applied inside the exported program)."""
    return tiny_model_dir(tmp_path_factory.mktemp("binary"), extra={"temperature": 1.7})


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    return out, _export(model_dir, out)


def _scans(folder: Path) -> list[Path]:
    """Grey 8-bit PNG, grey 16-bit PNG and a colour JPEG: the snippet's reading paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = [folder / "grey8.png", folder / "grey16.png", folder / "colour.jpg",
             folder / "small.png"]
    cv2.imwrite(str(paths[0]), head_scan(rng, 96))
    cv2.imwrite(str(paths[1]), head_scan(rng, 80).astype(np.uint16) * 257)
    tint = cv2.cvtColor(head_scan(rng, 72), cv2.COLOR_GRAY2BGR)
    tint[:, :, 0] = (tint[:, :, 0] * 0.9).astype(np.uint8)
    cv2.imwrite(str(paths[2]), tint)
    cv2.imwrite(str(paths[3]), head_scan(rng, 24))   # smaller than the model's size: upscaled
    return paths


def test_program_and_card(exported, model):
    out, card = exported
    blob = (out / "model.jaxexport").read_bytes()
    on_disk = json.loads((out / "model.json").read_text())
    assert on_disk == json.loads(json.dumps(card))
    assert card["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    # CUDA lowering works on a machine without a GPU (this one, in CI)
    assert card["platforms"] == ["cpu", "cuda"]
    assert card["classes"] == ["no", "yes"] and card["temperature"] == 1.7
    assert card["preprocess"]["size"] == 32 and card["threshold"] == 0.5
    assert card["threshold_applies_to"] == "P(yes)" and card["model_id"] == model.model_id
    # the pipeline ran the program on this machine and compared it with predict
    assert card["check"]["max_abs_diff_vs_predict"] <= 1e-5
    exp = jax.export.deserialize(bytearray(blob))
    (aval,) = exp.in_avals
    assert str(aval.shape[0]) == "N" and aval.shape[1:] == (32, 32, 3)
    assert str(exp.out_avals[0].shape) == "(N, 2)"
    x = np.random.default_rng(5).random((4, 32, 32, 3), dtype=np.float32)
    probs = np.asarray(exp.call(x))   # a batch other than the check's 2
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(probs[:, 1], inference.predict_array(model, x, batch_size=4),
                               atol=1e-5)


def test_multiclass_export_and_bad_platforms(tmp_path):
    head = {"type": "gap_dense", "units": 8, "dropout": 0.0, "outputs": 4}
    mc = tiny_model_dir(tmp_path / "mc", outputs=4, extra={
        "classes": MC_CLASSES, "positive": "", "negative_classes": ["no_tumour"], "head": head})
    card = _export(mc, tmp_path / "out", **{"export.platforms": ("cpu",)})
    assert card["platforms"] == ["cpu"] and card["classes"] == MC_CLASSES
    assert card["threshold_applies_to"] == "P(tumour) = 1 - P(no_tumour)"
    assert card["check"]["max_abs_diff_vs_predict"] <= 1e-5   # (N, 4) rows against predict's
    exp = jax.export.deserialize(bytearray((tmp_path / "out" / "model.jaxexport").read_bytes()))
    assert str(exp.out_avals[0].shape) == "(N, 4)"
    with pytest.raises(ConfigError, match=r"config\.export\.platforms: .*'metal'"):
        _export(mc, tmp_path / "bad", **{"export.platforms": ("cpu", "metal")})


def loader_snippet() -> str:
    text = (ROOT / "docs" / "serving.md").read_text()
    m = re.search(r"<!-- standalone-loader -->\n```python\n(.*?)```\n<!-- /standalone-loader -->",
                  text, flags=re.S)
    assert m, "docs/serving.md: the standalone loader block is missing"
    return m.group(1)


def test_docs_loader_matches_predict_without_bt_jax(exported, model, tmp_path):
    out, card = exported
    files = _scans(tmp_path / "scans")
    script = tmp_path / "load_export.py"
    # the snippet as the docs show it, then a check that it never imported bt_jax
    script.write_text(loader_snippet() + "\nassert 'bt_jax' not in sys.modules, "
                      "sorted(m for m in sys.modules if m.startswith('bt_jax'))\n")
    r = subprocess.run([sys.executable, "-I", str(script), str(out), *map(str, files)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = [json.loads(line) for line in r.stdout.splitlines()]
    rows = inference.predict_files(model, files, batch_size=4, progress=False)
    assert [g["file"] for g in got] == [str(f) for f in files]
    p_yes = np.array([g["probabilities"]["yes"] for g in got])
    want = np.array([r["p_tumour"] for r in rows], float)
    np.testing.assert_allclose(p_yes, want, atol=1e-5)
    np.testing.assert_allclose([sum(g["probabilities"].values()) for g in got], 1, atol=1e-6)
    assert [g["decision"] for g in got] == [r["decision"] for r in rows]
    assert np.ptp(want) > 0.1  # the scans get different answers: the match has teeth
