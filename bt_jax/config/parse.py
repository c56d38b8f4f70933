"""Settings written as strings, parsed once here into typed values; bad syntax is one
ConfigError naming the key.

    arg = parse.parse_arg(arg, quick=False)        # configs/x.py:quick -> arg.quick == True
    stages = parse.parse_stages(config.staged.stages)   # (Stage(name, trainable, epochs, lr), ...)
    folders = parse.class_map(config.external.class_map)    # {"notumor": "no_tumour"}
    copies = parse.class_multipliers(config.augment.multipliers, classes)   # {"yes": 6, "no": 13}

`validate` calls each, so a mistake stops the run before any work; the code that uses a
setting calls the same function and reads the typed value.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from bt_jax.config.schema import ConfigError

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def parse_arg(arg: str | None = "", **spec) -> ml_collections.FrozenConfigDict:
    """A config file's argument (`configs/x.py:quick,size=128`) as typed options: each name
    in `spec` with its default's type; a bare name sets a boolean True (big_vision's
    `parse_arg`). An unknown name or a value of the wrong type is a ConfigError."""
    values = dict(spec)
    for item in filter(None, (p.strip() for p in (arg or "").split(","))):
        name, eq, text = item.partition("=")
        if name not in spec:
            raise ConfigError(f"config file argument {arg!r}: unknown option {name!r}; known: "
                              f"{', '.join(spec) or 'none'}")
        kind = type(spec[name])
        try:
            values[name] = True if not eq and kind is bool else _typed(kind, text, eq)
        except ValueError:
            raise ConfigError(f"config file argument {arg!r}: {item!r}: expected {name}=<"
                              f"{kind.__name__}>") from None
    return ml_collections.FrozenConfigDict(values)


def _typed(kind: type, text: str, eq: str):
    if not eq:
        raise ValueError(text)
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(text)
        return text.lower() in _TRUE
    return kind(text)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One of method B's stages, written `name:groups:epochs:lr` in staged.stages."""

    name: str
    trainable: str | tuple[str, ...]  # "none" (head only), "all", or layer-group selectors
    epochs: int
    lr: float

    @property
    def groups(self) -> str:
        """The trainable groups as written ('+'-joined)."""
        return self.trainable if isinstance(self.trainable, str) else "+".join(self.trainable)


def parse_stage(text: str) -> Stage:
    """'stage1:block5_conv3+block5_conv4:15:1e-4' -> Stage(stage1, (block5_conv3,
    block5_conv4), 15, 1e-4)."""
    parts = str(text).split(":")
    if len(parts) != 4:
        raise ConfigError(f"config.staged.stages: {text!r} is not 'name:groups:epochs:lr'")
    name, groups, epochs, lr = parts
    try:
        epochs, lr = int(epochs), float(lr)
    except ValueError:
        raise ConfigError(f"config.staged.stages: {text!r}: epochs must be an int and lr a "
                          "float") from None
    if epochs < 1 or lr <= 0:
        raise ConfigError(f"config.staged.stages: {text!r}: need epochs >= 1 and lr > 0")
    trainable = groups if groups in ("none", "all") else tuple(g for g in groups.split("+") if g)
    return Stage(name, trainable, epochs, lr)


def parse_stages(items) -> tuple[Stage, ...]:
    """staged.stages: at least one stage, names distinct."""
    if not items:
        raise ConfigError("config.staged.stages: empty: method B needs at least one stage")
    stages = tuple(parse_stage(x) for x in items)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"config.staged.stages: stage names repeat: {names}")
    return stages


def class_map(items, tumour_lists=()) -> dict[str, str]:
    """external.class_map items "folder:model class" -> {folder: class}; refused beside
    `tumour_lists`, the folders of external.positive_classes / negative_classes (those ask
    for a tumour / no tumour evaluation instead)."""
    out = {}
    for item in items:
        folder, sep, cls = str(item).partition(":")
        if not sep or not folder or not cls:
            raise ConfigError(f"config.external.class_map: expected 'folder:model class' items, "
                              f"got {item!r}")
        if folder in out:
            raise ConfigError(f"config.external.class_map: folder {folder!r} mapped twice")
        out[folder] = cls
    if out and tuple(tumour_lists):
        raise ConfigError("config.external.class_map: give it or external.positive_classes / "
                          "negative_classes (a tumour / no tumour evaluation), not both")
    return out


def class_multipliers(multipliers, classes) -> dict[str, int]:
    """augment.multipliers {class name: copies per image (>= 1)}, one for each of `classes`."""
    classes = tuple(classes)
    missing = [k for k in classes if k not in multipliers]
    if missing:
        raise ConfigError(f"config.augment.multipliers: no multiplier for classes {missing}")
    out = {}
    for k, v in multipliers.items():
        if k not in classes:
            raise ConfigError(f"config.augment.multipliers: {k!r} is not one of the classes "
                              f"{classes}")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"config.augment.multipliers.{k}: expected a whole number of "
                              f"copies >= 1, got {v!r}")
        out[k] = v
    return out
