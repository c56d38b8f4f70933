"""The one config schema: every key, its default, and validation.

    from bt_jax import config as cfg
    c = cfg.base_config()          # every key with its default
    c.data.dir = "../shared/data/brain_mri"
    cfg.validate(c)                # raises ConfigError naming the bad key

Files in `configs/` start from `base_config()`, change what they need and lock the
result. Library code reads `config.group.key` directly; there are no hidden defaults.
`schema.py` lists the keys, `checks.py` validates them, `parse.py` turns the settings
written as strings (stages, class maps, a config file's argument) into typed values.
"""

from bt_jax.config.checks import check_classes, check_search, normalise, validate
from bt_jax.config.parse import (Stage, class_map, class_multipliers, parse_arg, parse_stage,
                                 parse_stages)
from bt_jax.config.schema import (ALLOCATIONS, BACKBONES, BALANCE, EQUALIZE, OPTIMIZERS,
                                  PIPELINES, PRUNERS, RENAMED, ConfigError, base_config, recipe_error,
                                  training_threshold)

__all__ = ["ALLOCATIONS", "BACKBONES", "BALANCE", "EQUALIZE", "OPTIMIZERS", "PIPELINES", "PRUNERS",
           "RENAMED", "ConfigError", "base_config", "check_classes", "check_search",
           "class_map", "class_multipliers", "normalise", "parse_arg", "parse_stage", "parse_stages",
           "Stage", "recipe_error", "training_threshold", "validate"]
