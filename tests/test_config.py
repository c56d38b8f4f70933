import importlib.util
import re
from pathlib import Path

import pytest

from bt_jax import config as cfg
from bt_jax.config import overrides

ROOT = Path(__file__).resolve().parents[1]


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


# ----------------------------------------------------------------------------- typed values

def test_a_config_files_argument_is_parsed_into_typed_options():
    assert cfg.parse_arg("", quick=False).quick is False
    assert cfg.parse_arg("quick", quick=False).quick is True
    arg = cfg.parse_arg("quick, size=128,crop=false", quick=False, size=224, crop=True)
    assert (arg.quick, arg.size, arg.crop) == (True, 128, False)
    with pytest.raises(cfg.ConfigError, match=r"argument 'quikc': unknown option 'quikc'; known: quick"):
        cfg.parse_arg("quikc", quick=False)
    with pytest.raises(cfg.ConfigError, match=r"'size=big': expected size=<int>"):
        cfg.parse_arg("size=big", size=224)
    with pytest.raises(cfg.ConfigError, match=r"'size': expected size=<int>"):
        cfg.parse_arg("size", size=224)


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/*.py")), ids=lambda p: p.stem)
def test_every_config_file_refuses_an_unknown_argument(path):
    """`configs/x.py:quikc` used to run the full config silently; now it is an error."""
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().name and module.get_config("").name
    with pytest.raises(cfg.ConfigError, match="unknown option 'quikc'"):
        module.get_config("quikc")


@pytest.mark.parametrize("items, match", [
    ((), "empty"),
    (("s1:block5:15",), "is not 'name:groups:epochs:lr'"),
    (("s1:block5:many:1e-4",), "epochs must be an int"),
    (("s1:block5:0:1e-4",), "need epochs >= 1"),
    (("s1:none:1:1e-4", "s1:all:1:1e-5"), "stage names repeat"),
])
def test_bad_stages_name_the_key(items, match):
    c = cfg.base_config()
    c.staged.stages = items
    with pytest.raises(cfg.ConfigError, match=r"^config\.staged\.stages: .*" + re.escape(match)):
        cfg.validate(c)


def test_stages_parse_into_typed_values():
    head, some, every = cfg.parse_stages(("h:none:2:3e-4", "s:block5_conv3+block5_conv4:1:1e-4",
                                          "f:all:3:1e-5"))
    assert head == cfg.Stage("h", "none", 2, 3e-4) and every.trainable == "all"
    assert some.trainable == ("block5_conv3", "block5_conv4")
    assert some.groups == "block5_conv3+block5_conv4" and some.lr == 1e-4


@pytest.mark.parametrize("items, positive, match", [
    (("notumor",), (), "expected 'folder:model class' items"),
    (("a:x", "a:y"), (), "folder 'a' mapped twice"),
    (("notumor:no_tumour",), ("glioma",), "not both"),
])
def test_bad_class_maps_are_refused_before_any_work(items, positive, match):
    c = cfg.base_config()
    c.external.class_map, c.external.positive_classes = items, positive
    with pytest.raises(cfg.ConfigError, match=r"^config\.external\.class_map: .*" + match):
        cfg.validate(c)
    c.external.class_map, c.external.positive_classes = ("notumor:no_tumour", "normal:no_tumour"), ()
    assert cfg.class_map(c.external.class_map) == {"notumor": "no_tumour", "normal": "no_tumour"}


@pytest.mark.parametrize("mult, key, match", [
    ({"yes": 6}, "augment.multipliers", "no multiplier for classes ['no']"),
    ({"yes": 6, "no": 13, "maybe": 2}, "augment.multipliers", "'maybe' is not one of"),
    ({"yes": 0, "no": 13}, "augment.multipliers.yes", "expected a whole number of copies >= 1"),
    ({"yes": 2.5, "no": 13}, "augment.multipliers.yes", "got 2.5"),
])
def test_bad_multipliers_name_the_key(mult, key, match):
    c = cfg.base_config()
    c.augment.balance, c.augment.multipliers = "multipliers", mult
    with pytest.raises(cfg.ConfigError, match="^" + re.escape(f"config.{key}: ") + ".*" + re.escape(match)):
        cfg.validate(c)
    # classes read from the data folder: the same check when the copies are planned
    assert cfg.class_multipliers({"yes": 6, "no": 13}, ("no", "yes")) == {"yes": 6, "no": 13}
