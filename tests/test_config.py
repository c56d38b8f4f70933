import pytest

from bt_jax import config as cfg


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
])
def test_bad_values_name_the_key(key, value, msg):
    c = cfg.base_config()
    group, _, leaf = key.rpartition(".")
    setattr(c[group] if group else c, leaf, value)
    with pytest.raises(cfg.ConfigError, match=msg):
        cfg.validate(c)


def test_multipliers_must_cover_classes():
    c = cfg.base_config()
    c.augment.balance = "multipliers"
    c.augment.multipliers = {"yes": 6}
    with pytest.raises(cfg.ConfigError, match="multipliers"):
        cfg.validate(c)
