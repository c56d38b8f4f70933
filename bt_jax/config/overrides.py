"""Command-line overrides checked against a config file's keys, for one-line errors.

    config = load_file("configs/quickstart.py:quick")      # what --config names, no overrides
    unknown_keys(config, ["--config.search.prunr=x"])
    # ["config.search.prunr: no such key; did you mean search.units or ...?"]
    unknown_keys(config, ["--config.train.finetune_epochs=0"])
    # ["config.train.finetune_epochs: renamed to config.finetune.epochs"]  (schema.RENAMED)

absl parses `--config.<key>=value` flags before `main` runs, and a mistyped key ends in a
long ml_collections traceback there, as does a config file refusing its argument
(`configs/x.py:quikc`, parse.parse_arg); launch.py asks these instead.
"""

from __future__ import annotations

import difflib
import importlib.util

from bt_jax.config.schema import RENAMED, ConfigError


def load_file(spec: str):
    """The config of `path[:arg]` (its `get_config(arg)`), or None if it cannot be loaded
    (absl's own error then stands)."""
    path, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location("_bt_jax_config_file", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception:  # noqa: BLE001 - any failure: no better message than absl's
        return None


def unknown_keys(config, overrides: list[str]) -> list[str]:
    """One line per `--config.<key>=...` naming no key of `config`, with the closest ones."""
    if config is None:
        return []

    def leaves(c, prefix=""):
        for k, v in c.items():
            yield f"{prefix}{k}"
            if hasattr(v, "items"):
                yield from leaves(v, f"{prefix}{k}.")
    known = list(leaves(config))
    out = []
    for arg in overrides:
        key = arg.split("=", 1)[0][len("--config."):]
        if key in RENAMED:
            out.append(f"config.{key}: renamed to config.{RENAMED[key]}")
        elif key not in known:
            near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            out.append(f"config.{key}: no such key"
                       + (f"; did you mean {' or '.join(near)}?" if near else ""))
    return out


def refused_argument(e: BaseException) -> list[str]:
    """The ConfigError a config file's get_config raised (its argument refused), which absl
    wraps in errors of its own, as one line; [] if `e` holds none."""
    while e.__context__ is not None:
        e = e.__context__
    return [str(e)] if isinstance(e, ConfigError) else []
