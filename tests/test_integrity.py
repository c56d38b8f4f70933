"""Run integrity: stale artefacts are never reused, settings are checked before any work,
every config key does something, user mistakes are one clear line."""

import logging
import re
from pathlib import Path

import jax
import config_reads
import numpy as np
import pytest

from bt_jax import config as cfg
from bt_jax import model_card
from bt_jax.data import dataset, discover
from bt_jax.train import checkpoint, head
from bt_jax.train.folds import make_fold_arrays

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- stale artefacts

def test_checkpoints_of_other_settings_are_never_reused(tmp_path, caplog):
    a = checkpoint.open_checkpoints(tmp_path, "finetune", {"head": {"units": 8}, "lr": 1e-4})
    a.save_last(0, {"w": np.ones(3)}, {"history": {}})
    before = discover.folder_fingerprint(a.root)
    with caplog.at_level(logging.WARNING):
        b = checkpoint.open_checkpoints(tmp_path, "finetune", {"head": {"units": 16}, "lr": 1e-4})
    assert b.root != a.root and b.restore_last({"w": np.zeros(3)}) == (None, None)
    assert "made with other settings (head.units: 8 -> 16)" in caplog.text
    assert discover.folder_fingerprint(a.root) == before          # left alone, not deleted
    same = checkpoint.open_checkpoints(tmp_path, "finetune", {"lr": 1e-4, "head": {"units": 8}})
    assert same.root == a.root and same.restore_last({"w": np.zeros(3)})[0]["w"].sum() == 3


def test_preprocessing_cache_depends_on_min_size(phantom_dir, tmp_path, small_config):
    small_config.data.dir = str(phantom_dir)
    first = dataset.prepare_dataset(small_config, tmp_path, progress=False)
    again = dataset.prepare_dataset(small_config, tmp_path, progress=False)
    assert first.cache_hits == 0 and again.cache_hits == len(again.records)
    small_config.data.min_size = 100   # phantoms are 96 px: now every file is too small
    with pytest.raises(discover.DataLayoutError, match="no usable images"):
        dataset.prepare_dataset(small_config, tmp_path, progress=False)


@pytest.mark.e2e
def test_feature_cache_depends_on_dtype(phantom_dir, tmp_path, small_config, caplog):
    from bt_jax.method_a import steps
    c = small_config
    c.data.dir, c.preprocess.size, c.weights.random_init = str(phantom_dir), 32, True
    c.augment.balance = "none"
    ds = dataset.prepare_dataset(c, tmp_path, progress=False)
    copies = steps.make_copy_set(c, ds)
    with caplog.at_level(logging.INFO):
        f32, _ = steps.backbone_features(c, tmp_path, ds, copies, "vgg16", "random-init")
        c.model.dtype = "bfloat16"
        bf16, _ = steps.backbone_features(c, tmp_path, ds, copies, "vgg16", "random-init")
    assert "reusing cached features" not in caplog.text
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 2
    assert not np.array_equal(f32, bf16)


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("key, value, msg", [
    ("search.units", (), "config.search.units: expected a non-empty list"),
    ("search.batch_sizes", (0,), "config.search.batch_sizes"),
    ("search.optimizers", (), "config.search.optimizers"),
    ("search.dropout_max", 1.0, "config.search.dropout_max"),
    ("search.lr_min", 1.0, "config.search.lr_min: need 0 < lr_min <= lr_max"),
    ("finetune.lr_factor", 0.0, "config.finetune.lr_factor: expected > 0"),
    ("finetune.batch_size", -1, "config.finetune.batch_size: expected >= 0"),
    ("train.epochs", 0, "config.train.epochs: expected >= 1"),
    ("train.patience", 0, "config.train.patience"),
    ("train.momentum", 1.0, "config.train.momentum: expected [0, 1)"),
    ("train.optimizer", "rmsprop", "config.train.optimizer"),
    ("train.dropout", 1.5, "config.train.dropout"),
    ("staged.stages", (), "config.staged.stages: empty"),
    ("staged.plateau_factor", 1.0, "config.staged.plateau_factor"),
    ("threshold.value", 1.5, "config.threshold.value"),
    ("predict.colour", "paint", "config.predict.colour"),
])
def test_every_setting_is_checked_up_front(key, value, msg):
    c = cfg.base_config()
    group, _, leaf = key.rpartition(".")
    setattr(c[group], leaf, value)
    with pytest.raises(cfg.ConfigError, match=re.escape(msg)):
        cfg.validate(c)


def test_method_b_needs_a_validation_split_and_apply_needs_a_model():
    c = cfg.base_config()
    c.pipeline = "staged"
    with pytest.raises(cfg.ConfigError, match="config.split.val_fraction"):
        cfg.validate(c)
    c.pipeline = "evaluate"
    with pytest.raises(cfg.ConfigError, match="config.checkpoint"):
        cfg.validate(c)


def test_comma_separated_lists_from_the_command_line():
    c = cfg.base_config()
    c.external.positive_classes = ("glioma,meningioma, pituitary",)   # as ml_collections parses it
    c.search.units = ("32,64",)
    c.search.backbones = ("(efficientnet_lite0, vgg16)",)
    cfg.validate(cfg.normalise(c))
    assert c.external.positive_classes == ("glioma", "meningioma", "pituitary")
    assert c.search.units == (32, 64) and c.search.backbones == ("efficientnet_lite0", "vgg16")
    c.search.units = ("32,many",)
    with pytest.raises(cfg.ConfigError, match="config.search.units: expected numbers"):
        cfg.normalise(c)


def _code_files():
    """Where settings take effect: the package but its config schema and validation
    (checking a key is not using it), launch.py, and configs/ (which set keys: a store is
    not a read)."""
    return ([p for p in sorted((ROOT / "bt_jax").rglob("*.py")) if p.parent.name != "config"]
            + [ROOT / "launch.py", *sorted((ROOT / "configs").glob("*.py"))])


def test_every_config_key_is_read_somewhere():
    """A key that no code reads is a setting that silently does nothing. Reads are found
    by syntax (tests/config_reads.py): config.<group>.<key> and its aliases, not a leaf
    name anywhere."""
    unread = config_reads.unread_keys(_code_files(), config_reads.schema_keys(cfg.base_config()))
    assert not unread, f"config keys no code reads: {unread}"


def test_an_unread_config_key_is_named():
    """Planted keys that nothing reads, named like keys read elsewhere (seed, k, size, dir,
    name): matching leaf names would have passed them all."""
    c = cfg.base_config()
    c.split.seed, c.preprocess.k, c.eval.size, c.train.dir = 0, 3, 1, ""
    c.data.phantoms.seed, c.augment.units, c.pipeline_name = 0, 8, "x"
    unread = config_reads.unread_keys(_code_files(), config_reads.schema_keys(c))
    assert unread == ["augment.units", "data.phantoms.seed", "eval.size", "pipeline_name",
                      "preprocess.k", "split.seed", "train.dir"]


# ----------------------------------------------------------------------------- failures

def test_a_diverged_head_is_refused():
    feats = np.full((40, 4), np.nan, np.float32)
    labels = np.arange(40) % 2
    from bt_jax.data import split
    s = split.make_splits(labels, np.arange(40), k=2, seed=0)
    folds = make_fold_arrays(s, 40, np.zeros(0, int))
    res = head.fit_folds(feats, labels, folds, head.HeadHParams(units=4, epochs=2),
                         jax.random.PRNGKey(0))
    with pytest.raises(head.TrainingDivergedError, match="NaN/inf in every epoch"):
        head.check_converged(res, what="test head")


def test_model_card_outside_an_installed_package(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)
    monkeypatch.setattr(md, "version", missing)
    assert model_card.package_version() == "source"


def test_hidden_and_nested_entries_in_the_data_folder(tmp_path):
    import cv2
    for cls in ("no", "yes"):
        (tmp_path / cls / "scanner_a").mkdir(parents=True)          # only sub-folders
        cv2.imwrite(str(tmp_path / cls / "scanner_a" / "x.png"), np.full((32, 32), 99, np.uint8))
    (tmp_path / "yes" / ".ipynb_checkpoints").mkdir()
    cv2.imwrite(str(tmp_path / "yes" / ".ipynb_checkpoints" / "x-checkpoint.png"),
                np.zeros((32, 32), np.uint8))
    (tmp_path / "no" / ".DS_Store").write_bytes(b"\0")
    files = discover.discover(tmp_path, ("no", "yes"), (".png",))
    assert [f.rel for f in files] == ["no/scanner_a/x.png", "yes/scanner_a/x.png"]
    assert discover.hidden_entries(tmp_path, ("no", "yes")) == ["no/.DS_Store",
                                                                "yes/.ipynb_checkpoints"]


def test_leakage_tripwire_is_an_exception_not_an_assert():
    from bt_jax.data import split
    from bt_jax.train.folds import LeakageError
    labels = np.arange(40) % 2
    s = split.make_splits(labels, np.arange(40), k=2, seed=0)
    held = int(s.fold_val(0)[0])
    with pytest.raises(LeakageError, match="fold 0: training would see held-out images"):
        make_fold_arrays(s, 40, np.array([held]), fold_copies=[np.array([0]), np.array([0])])


def test_metrics_name_their_threshold_and_add_the_operating_one(tmp_path):
    from bt_jax.reporting import evaluation
    c = cfg.base_config()
    c.eval.bootstrap = 50
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.1, 0.35, 0.6, 0.4, 0.7, 0.9, 0.45, 0.2])
    (heading, body, _), rep = evaluation.evaluate_split(
        y, p, out_dir=tmp_path, title="t", class_names=("no", "yes"), config=c, synthetic=True,
        operating_threshold=0.3)
    assert rep["threshold"] == 0.5 and rep["at_operating_threshold"]["threshold"] == 0.3
    assert rep["sensitivity"]["value"] == 0.5 and rep["at_operating_threshold"]["sensitivity"]["value"] == 1.0
    assert "At the model's operating threshold 0.3" in body
    _, same = evaluation.evaluate_split(y, p, out_dir=tmp_path, title="t", class_names=("no", "yes"),
                                        config=c, synthetic=True, operating_threshold=0.5)
    assert "at_operating_threshold" not in same


def test_a_step_left_by_a_killed_run_is_written_again(tmp_path):
    """Killed after the starting point's best checkpoint, before any 'last' one: the
    relaunch saves step 0 again instead of failing with orbax's StepAlreadyExistsError."""
    ck = checkpoint.Checkpoints(tmp_path / "c")
    ck.save_best(-1, {"w": np.zeros(2)}, 0.7)
    again = checkpoint.Checkpoints(tmp_path / "c")           # the relaunched process
    again.save_best(-1, {"w": np.ones(2)}, 0.6)
    again.save_last(0, {"w": np.ones(2)}, {"history": {}})
    again.save_last(0, {"w": np.full(2, 2.0)}, {"history": {}})
    assert again.restore_best({"w": np.zeros(2)})["w"].tolist() == [1.0, 1.0]
    assert again.restore_last({"w": np.zeros(2)})[0]["w"].tolist() == [2.0, 2.0]
