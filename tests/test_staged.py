"""Method B: staged unfreezing end to end, and the same stages idea on ResNet50V2."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import jax.numpy as jnp
import pytest
from helpers import run_launch

from bt_jax.config import ConfigError, parse_stage, parse_stages
from bt_jax.data import discover
from bt_jax.models import registry
from bt_jax.pipelines import staged
from bt_jax.train import partitions
from test_tensorboard import read_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import vgg19_staged  # noqa: E402

STAGED = "configs/vgg19_staged.py:quick"


def _stage_dirs(workdir, i, name):
    return sorted((workdir / "checkpoints").glob(f"stage_{i}_{name}-*"))


@pytest.mark.e2e
def test_staged_pipeline_quick(tmp_path):
    r = run_launch(config=STAGED, workdir=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "stages.json").read_text())
    assert [x["stage"] for x in rows] == ["baseline", "stage1", "final"]
    for i, x in enumerate(rows):
        assert 0 <= x["val_acc"] <= 1 and 0 <= x["test_acc"] <= 1
        (ck,) = _stage_dirs(tmp_path, i, x["stage"])
        assert (ck / "done.json").exists() and any((ck / "best").iterdir())
        assert json.loads((ck / "fingerprint.json").read_text())[f"stage_{i}"]["trainable"]
        # TensorBoard: a run per stage holding each epoch once, as its history says
        hist = json.loads((ck / "done.json").read_text())["history"]
        tb = read_run(tmp_path / "tensorboard" / f"stage_{i}_{x['stage']}")
        assert [s for s, _ in tb["val/loss"]] == list(range(len(hist["val_loss"])))
        np.testing.assert_allclose([v for _, v in tb["val/accuracy"]], hist["val_acc"], rtol=1e-6)
        assert (tmp_path / "stages" / f"{i}_{x['stage']}" / "confusion.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "stages.png").exists()
    rep = (tmp_path / "report.md").read_text()
    assert "| stage1 | block5_conv3+block5_conv4 |" in rep and "SYNTHETIC" in rep
    m = json.loads((tmp_path / "manifest.json").read_text())
    # split before augmenting: val/test images exist only once, as originals
    assert m["split_counts"]["val"] and m["split_counts"]["test"]
    # the final stage is the model predict loads (Flatten head, features input)
    from bt_jax import inference
    model = inference.load_model(tmp_path)
    assert model.card["head"]["type"] == "flatten" and (tmp_path / "report.html").exists()
    files = sorted((tmp_path / "synthetic_phantoms" / "yes").glob("*.png"))[:3]
    preds = inference.predict_files(model, files, batch_size=4)
    assert [p["status"] for p in preds] == ["ok"] * 3
    assert all(0 <= p["p_tumour"] <= 1 for p in preds)
    # Grad-CAM through the Flatten head (two-class softmax) agrees with predict's probabilities
    from bt_jax.inference import gradcam as explain
    from bt_jax.data import preprocess, scans
    imgs = np.stack([preprocess.preprocess_image(scans.read_scan(f)[0], model.preprocess)[0]
                     for f in files])
    cams, probs = explain.gradcam(model.module, model.variables, imgs, target="features", batch_size=4)
    assert cams.shape[0] == 3 and np.isfinite(cams).all()
    np.testing.assert_allclose(probs, [p["p_tumour"] for p in preds], atol=1e-4)
    # A relaunch reloads every finished stage: no epoch runs, no checkpoint file changes.
    before = [discover.folder_fingerprint(tmp_path / d) for d in ("checkpoints", "tensorboard")]
    r2 = run_launch(config=STAGED, workdir=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads((tmp_path / "stages.json").read_text()) == rows
    assert [discover.folder_fingerprint(tmp_path / d)
            for d in ("checkpoints", "tensorboard")] == before
    assert " epoch 0: train loss" not in r2.stderr and r2.stderr.count("resuming after epoch") == 3
    # Another lr for stage1: the baseline is reused untouched; stage1 and everything after it
    # retrain in new folders, and the stale ones are never loaded (nor deleted).
    base = discover.folder_fingerprint(_stage_dirs(tmp_path, 0, "baseline")[0])
    r3 = run_launch("--config.staged.stages='baseline:none:1:3e-4',"
                    "'stage1:block5_conv3+block5_conv4:1:5e-5','final:all:1:1e-5'",
                    config=STAGED, workdir=tmp_path)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert discover.folder_fingerprint(_stage_dirs(tmp_path, 0, "baseline")[0]) == base
    assert len(_stage_dirs(tmp_path, 1, "stage1")) == 2 and len(_stage_dirs(tmp_path, 2, "final")) == 2
    assert "were made with other settings (stage_1.lr: 0.0001 -> 5e-05" in r3.stderr
    card = json.loads((tmp_path / "model.json").read_text())
    fp = json.loads((tmp_path / card["checkpoint"]).parent.joinpath("fingerprint.json").read_text())
    assert fp["stage_1"]["lr"] == 5e-5


def test_resnet50v2_stage_groups_resolve():
    c = vgg19_staged.get_config("resnet50v2")
    spec = registry.get("resnet50v2")
    stages = parse_stages(c.staged.stages)
    staged.check_stage_groups(spec, stages, 64)
    shapes = jax.eval_shape(lambda: spec.make().init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    params = {"backbone": shapes["params"], "head": {"out": {"kernel": jnp.zeros((2, 2))}}}
    counts = [partitions.count_trainable(params, partitions.trainable_labels(params, spec, s.trainable))[0]
              for s in stages]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # each stage unfreezes more


def test_stage_typo_is_an_error_before_work():
    spec = registry.get("vgg19")
    with pytest.raises(ConfigError, match="block6"):
        staged.check_stage_groups(spec, [parse_stage("s:block6:1:1e-4")], 32)
