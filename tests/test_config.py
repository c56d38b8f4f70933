import pytest

from bt_jax import config as cfg
from bt_jax.config import overrides


def test_base_config_validates():
    cfg.validate(cfg.base_config())


@pytest.mark.parametrize("key, value, msg", [
    ("pipeline", "fit", "config.pipeline"),
    ("data.positive", "tumour", "config.data.positive"),
    ("data.classes", ("yes",), "config.data.classes"),
    ("preprocess.equalize", "gamma", "config.preprocess.equalize"),
    ("preprocess.size", 8, "config.preprocess.size"),
    ("split.test_fraction", 0.7, "config.split.test_fraction"),
    ("split.k", 1, "config.split.k"),
    ("augment.balance", "smote", "config.augment.balance"),
    ("augment.rotation", -5.0, "config.augment.rotation"),
    ("search.parallel_trials", -1, "config.search.parallel_trials"),
    ("search.allocation", "padded", "config.search.allocation"),
    ("train.lane_batch", -2, "config.train.lane_batch"),
    # each key of a group of related checks is named on its own
    ("eval.cv_repeats", -1, "config.eval.cv_repeats"),
    ("eval.calibration_bins", 1, "config.eval.calibration_bins"),
    ("eval.bootstrap", -1, "config.eval.bootstrap"),
    ("eval.ensemble_k", -1, "config.eval.ensemble_k"),
    ("predict.batch_size", 0, "config.predict.batch_size"),
    ("gradcam.batch_size", 0, "config.gradcam.batch_size"),
    ("finetune.backbone_lr_factor", 0.0, "config.finetune.backbone_lr_factor"),
    ("finetune.weight_decay", -0.1, "config.finetune.weight_decay"),
    ("finetune.warmup_epochs", -1.0, "config.finetune.warmup_epochs"),
    ("finetune.epochs", -1, "config.finetune.epochs"),
    ("data.store_dtype", "float16", "config.data.store_dtype"),
    ("finetune.schedule", "linear", "config.finetune.schedule"),
    ("threshold.value", 1.5, "config.threshold.value"),
    ("threshold.target_sensitivity", 1.5, "config.threshold.target_sensitivity"),
])
def test_bad_values_name_the_key(key, value, msg):
    c = cfg.base_config()
    group, _, leaf = key.rpartition(".")
    setattr(c[group] if group else c, leaf, value)
    with pytest.raises(cfg.ConfigError, match="^" + msg.replace(".", r"\.") + ":"):
        cfg.validate(c)


def test_frozen_only_is_valid():
    c = cfg.base_config()
    c.finetune.epochs = 0
    cfg.validate(c)


def test_multipliers_must_cover_classes():
    c = cfg.base_config()
    c.augment.balance = "multipliers"
    c.augment.multipliers = {"yes": 6}
    with pytest.raises(cfg.ConfigError, match="multipliers"):
        cfg.validate(c)


@pytest.mark.parametrize("old, new", sorted(cfg.RENAMED.items()))
def test_a_renamed_key_names_its_new_home(old, new):
    """In a config file written before the move (an unlocked ConfigDict takes the old key
    silently) and on the command line."""
    c = cfg.base_config()
    group, _, leaf = old.rpartition(".")
    setattr(c[group], leaf, 0)
    with pytest.raises(cfg.ConfigError, match=f"^config.{old}: renamed to config.{new}$"):
        cfg.validate(c)
    assert overrides.unknown_keys(cfg.base_config(), [f"--config.{old}=0"]) == [
        f"config.{old}: renamed to config.{new}"]


def test_one_threshold_for_training_and_applying():
    """threshold.value < 0: 0.5 when training (model.json, the report's tables), the model's
    own when applying; target_sensitivity chooses instead, so the two together are refused."""
    c = cfg.base_config()
    assert cfg.training_threshold(c.threshold) == 0.5
    c.threshold.value = 0.3
    assert cfg.training_threshold(c.threshold) == 0.3
    c.threshold.target_sensitivity = 0.9
    with pytest.raises(cfg.ConfigError, match=r"^config\.threshold\.target_sensitivity: .*give one"):
        cfg.validate(c)
    c.threshold.value = -1.0
    cfg.validate(c)


def test_target_sensitivity_of_several_classes_needs_the_no_tumour_ones():
    c = cfg.base_config()
    c.data.classes, c.data.positive = ("glioma", "meningioma", "no_tumour"), ""
    c.threshold.target_sensitivity = 0.9
    with pytest.raises(cfg.ConfigError,
                       match=r"^config\.threshold\.target_sensitivity: .*negative_classes"):
        cfg.validate(c)
    c.data.negative_classes = ("no_tumour",)
    cfg.validate(c)
