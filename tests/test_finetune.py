"""Staged fine-tuning machinery on a real VGG19 at 32x32 (fast enough on CPU); resume of a
launch.py run killed inside its fine-tuning."""

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import QUICK_SEARCH
from flax import traverse_util
from helpers import launch, outcome

from bt_jax.data import augment
from bt_jax.models import registry
from bt_jax.models.heads import Classifier, FlattenHead
from bt_jax.train import finetune, partitions
from bt_jax.train.checkpoint import Checkpoints

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vgg_setup():
    spec = registry.get("vgg19")
    model = Classifier(backbone=spec.make(), head=FlattenHead(hidden=(32, 16)),
                       head_input="features")
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3))))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (24, 32, 32, 3)).astype(np.float32)
    labels = (np.arange(24) % 2).astype(np.int32)
    images[labels == 1, 8:16, 8:16] = 1.0  # learnable signal
    keys = np.asarray(augment.copy_keys(0, np.arange(16), np.zeros(16, int)))
    data = finetune.FitData(images=images, labels=labels, train_src=np.arange(16),
                            train_keys=keys, train_aug=np.arange(16) >= 12,
                            val_idx=np.arange(16, 24),
                            aug_params=augment.AugmentParams(rotation=10.0, hflip=True))
    return spec, model, jax.tree.map(np.asarray, variables), data


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_frozen_groups_bit_identical_trainable_changed(vgg_setup):
    spec, model, variables, data = vgg_setup
    fs = finetune.FitSpec(epochs=1, batch_size=8, lr=1e-3, trainable=("block5_conv3", "block5_conv4"),
                          patience=5)
    res = finetune.fit(model, variables, spec, data, fs, progress=False)
    before, after = _flat(variables["params"]), _flat(res.last["params"])
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    trainable = {k for k in before if k.startswith("head/") or "block5_conv3" in k
                 or "block5_conv4" in k}
    assert changed == trainable
    # restore-best considers the starting point: the result is either it or the trained state
    best = _flat(res.variables["params"])
    assert all(np.array_equal(best[k], after[k]) for k in best) or \
        all(np.array_equal(best[k], before[k]) for k in best)
    assert res.history["initial_val_loss"] > 0 and (res.best_epoch == -1) == all(
        np.array_equal(best[k], before[k]) for k in best)


def test_labels_cover_every_leaf_and_reject_typos(vgg_setup):
    spec, _, variables, _ = vgg_setup
    labels = partitions.trainable_labels(variables["params"], spec, ("block4", "block5"))
    flat = _flat(labels)
    assert flat["backbone/block4_conv1/kernel"] == "train"
    assert flat["backbone/block3_conv1/kernel"] == "frozen"
    assert flat["head/fc1/kernel"] == "train"
    n_train, total = partitions.count_trainable(variables["params"], labels)
    assert 0 < n_train < total
    with pytest.raises(ValueError, match="block9"):
        partitions.trainable_labels(variables["params"], spec, ("block9",))


def test_an_unlabelled_parameter_is_an_exception(vgg_setup, monkeypatch):
    """A planted defect: group selection that drops a leaf. The check is an exception,
    so it holds under `python -O` too."""
    from flax import traverse_util
    from bt_jax.models import registry
    spec, _, variables, _ = vgg_setup
    real = registry.select_groups

    def drops_one(params, spec, selectors):
        flat = traverse_util.flatten_dict(real(params, spec, selectors))
        flat.pop(sorted(flat)[0])
        return traverse_util.unflatten_dict(flat)
    monkeypatch.setattr(registry, "select_groups", drops_one)
    with pytest.raises(ValueError, match="parameters without a label"):
        partitions.trainable_labels(variables["params"], spec, ("block5",))


@pytest.mark.e2e
def test_a_longer_plan_continues_from_the_last_checkpoint(vgg_setup, tmp_path):
    spec, model, variables, data = vgg_setup
    fs = finetune.FitSpec(epochs=2, batch_size=8, lr=1e-4, trainable="none", patience=5)
    first = finetune.fit(model, variables, spec, data, fs, ckpt=Checkpoints(tmp_path / "s"),
                         progress=False)
    assert len(first.history["val_loss"]) == 2
    # in one process: a second fit with a longer plan continues at epoch 2 (a real kill:
    # test_checkpoint_resume_after_kill)
    fs3 = finetune.FitSpec(epochs=3, batch_size=8, lr=1e-4, trainable="none", patience=5)
    again = finetune.fit(model, variables, spec, data, fs3, ckpt=Checkpoints(tmp_path / "s"),
                         progress=False)
    assert again.resumed_from == 1
    assert len(again.history["val_loss"]) == 3
    assert again.history["val_loss"][:2] == first.history["val_loss"]
    best = Checkpoints(tmp_path / "s").restore_best(variables)
    assert jax.tree.structure(best["params"]) == jax.tree.structure(variables["params"])
    for a, b in zip(jax.tree.leaves(best["params"]), jax.tree.leaves(again.variables["params"])):
        np.testing.assert_array_equal(a, b)


# launch.py's train pipeline: quick phantoms, random-init Lite0, three fine-tune epochs.
TRAIN = [f"--config={ROOT}/{QUICK_SEARCH[0]}", *QUICK_SEARCH[1:], "--config.pipeline=train",
         "--config.train.units=32", "--config.train.lr=1e-3", "--config.finetune.epochs=3",
         "--config.eval.cv_repeats=0"]


def _epochs_run(log) -> list[int]:
    return [int(e) for e in re.findall(r"fine-tune epoch (\d+):", "".join(log))]


@pytest.mark.slow
def test_checkpoint_resume_after_kill(tmp_path):
    """A real launch.py process is SIGKILLed as soon as its first fine-tune epoch's
    checkpoint is on disk; relaunched, it resumes after that epoch (none redone, the
    starting point not scored again) and ends with the model card and metrics of a
    fine-tune never interrupted: the workdir copied at the kill, fine-tune checkpoints
    removed, relaunched. Three launches, most of it compiling: 11 min on the 2-core VM
    under a load of 8."""
    a, b = tmp_path / "a", tmp_path / "b"
    last = lambda w: sorted((w / "checkpoints").glob("finetune-*/last.json"))  # noqa: E731
    assert launch(a, TRAIN, kill_when=lambda: bool(last(a))).rc == -9
    at_kill = json.loads(last(a)[0].read_text())
    e = at_kill["epoch"]
    assert 0 <= e < 2, f"killed after epoch {e}: nothing left to resume"
    shutil.copytree(a, b)
    shutil.rmtree(last(b)[0].parent)
    resumed = launch(a, TRAIN).log
    assert f"fine-tune: resuming after epoch {e} " in "".join(resumed)
    assert _epochs_run(resumed) == list(range(e + 1, 3))
    assert not any("fine-tune: starting point" in line for line in resumed)
    done = json.loads((last(a)[0].parent / "done.json").read_text())
    assert len(done["history"]["val_loss"]) == 3
    assert done["history"]["val_loss"][:e + 1] == at_kill["history"]["val_loss"]
    fresh = launch(b, TRAIN).log
    assert _epochs_run(fresh) == [0, 1, 2]
    assert outcome(a) == outcome(b)


def test_plateau_lowers_learning_rate(vgg_setup):
    spec, model, variables, data = vgg_setup
    fs = finetune.FitSpec(epochs=4, batch_size=8, lr=1e-9, trainable="none", patience=10,
                          plateau_factor=0.5, plateau_patience=1, plateau_monitor="val_loss")
    res = finetune.fit(model, variables, spec, data, fs, progress=False)
    lrs = res.history["lr"]
    assert lrs[0] == pytest.approx(1e-9) and lrs[-1] < lrs[0]


def test_a_nan_training_loss_stops_the_run_with_the_best_weights(vgg_setup):
    """The NaN check sits where the epoch's metric sums are read: a planted NaN image makes
    the first epoch's training loss NaN (and every weight after it), so the run stops there
    instead of running its other epochs, keeping the (finite) starting weights."""
    spec, model, variables, data = vgg_setup
    images = data.images.copy()
    images[int(data.train_src[0])] = np.nan
    bad = finetune.FitData(images=images, labels=data.labels, train_src=data.train_src,
                           train_keys=data.train_keys, train_aug=np.zeros(16, bool),
                           val_idx=data.val_idx)
    fs = finetune.FitSpec(epochs=4, batch_size=8, lr=1e-3, trainable="all", patience=10)
    res = finetune.fit(model, variables, spec, bad, fs, progress=False)
    assert np.isnan(res.history["train_loss"][0]) and len(res.history["train_loss"]) == 1
    assert res.stopped_epoch == 0 and res.best_epoch == -1
    assert all(np.isfinite(v).all() for v in _flat(res.variables["params"]).values())
