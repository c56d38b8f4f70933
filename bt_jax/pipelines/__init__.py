"""Pipelines: short scripts of library calls, one per `config.pipeline`.

    from bt_jax import pipelines
    pipelines.run(config, workdir)   # validates, saves config.json, dispatches
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from bt_jax import config as config_lib

# pipeline name -> module in this package exposing run(config, workdir)
_MODULES = {"prepare": "prepare", "search": "search", "staged": "staged", "predict": "predict",
            "evaluate": "evaluate"}


def run(config, workdir: str | Path):
    config_lib.validate(config)
    if config.pipeline not in _MODULES:
        raise config_lib.ConfigError(
            f"config.pipeline: {config.pipeline!r} is not available in this version "
            f"(available: {sorted(_MODULES)})")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=1, default=str))
    logging.info("pipeline %s -> %s", config.pipeline, workdir)
    module = importlib.import_module(f"bt_jax.pipelines.{_MODULES[config.pipeline]}")
    return module.run(config, workdir)
