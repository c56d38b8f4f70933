"""docs/configuration.md's key table: every config key with its default (from the schema),
its allowed values (the modules' own lists) and its meaning (the comment on its line in
bt_jax/config/schema.py). Rendered by tables.py into the <!-- table:config --> block.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _schema_comments() -> dict[str, str]:
    """key -> the comment on its line in schema.py (and comment-only lines below it)."""
    out, last = {}, None
    for line in (ROOT / "bt_jax" / "config" / "schema.py").read_text().splitlines():
        m = re.match(r"\s*c\.([\w.]+) = .*?(?:#\s*(.*))?$", line)
        if m:
            last = m[1]
            out[last] = (m[2] or "").strip()
        elif last and re.match(r"\s{20,}#", line):  # a comment continued under the last key
            out[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return out


def _allowed() -> dict[str, tuple]:
    from bt_jax.config import schema
    from bt_jax.models import common, depthwise, registry, winograd
    return {"pipeline": schema.PIPELINES, "preprocess.equalize": schema.EQUALIZE,
            "augment.balance": schema.BALANCE, "search.allocation": schema.ALLOCATIONS,
            "search.pruner": schema.PRUNERS,
            "train.optimizer": schema.OPTIMIZERS, "staged.optimizer": schema.OPTIMIZERS,
            "search.optimizers": schema.OPTIMIZERS, "data.store_dtype": schema.STORE_DTYPES,
            "model.name": schema.BACKBONES + ("recipes: backbones and " +
                                              "/".join(registry.RECIPE_OPTIONS) + " joined by +",),
            "search.backbones": schema.BACKBONES, "export.platforms": schema.EXPORT_PLATFORMS,
            "finetune.schedule": schema.SCHEDULES, "model.dtype": tuple(common.DTYPES),
            "model.depthwise": depthwise.IMPLS, "model.conv3x3": winograd.CHOICES}


def config_table() -> str:
    sys.path.insert(0, str(ROOT))
    from bt_jax.config import base_config
    comments, allowed = _schema_comments(), _allowed()

    def leaves(c, prefix=""):
        for k, v in c.items():
            if hasattr(v, "items") and not isinstance(v, dict) and f"{prefix}{k}" != "augment.multipliers":
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    order = {k: i for i, k in enumerate(comments)}  # the schema's own order
    for key, value in sorted(leaves(base_config()), key=lambda kv: order.get(kv[0], len(order))):
        v = value.to_dict() if hasattr(value, "to_dict") else value
        ok = ", ".join(f"`{a}`" for a in allowed[key]) if key in allowed else ""
        cell, note = (str(x).replace("|", "\\|") for x in (repr(v), comments.get(key, "")))
        lines.append(f"| `{key}` | `{cell}` | {ok} | {note} |")
    return "\n".join(lines)
