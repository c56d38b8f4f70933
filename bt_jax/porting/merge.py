"""Strict merge of ported tensors into a Flax variables template.

    template = model.init(rng, x, train=False)           # {'params': ..., 'batch_stats': ...}
    source = {("params", "conv1", "kernel"): array, ...}  # after rename/transpose
    variables = strict_merge(template, source, origin="resnet50v2.h5")

Every source tensor must be used once, every template leaf filled once, shapes equal;
otherwise PortError lists the missing, extra and mis-shaped entries on both sides.
`excuse` is a regex over '/'-joined template paths that may stay at their init values
(e.g. a classifier that the source file does not hold).
"""

from __future__ import annotations

from bt_jax.errors import UserError
import re

import numpy as np
from flax import traverse_util


class PortError(UserError, ValueError):
    """A weight file does not match the architecture; the message names the tensors."""


def _fmt(keys, limit=12):
    keys = sorted("/".join(k) for k in keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def strict_merge(template, source: dict, *, origin: str = "weights", excuse: str | None = None):
    flat = traverse_util.flatten_dict(template)
    flat = {tuple(str(p) for p in k): v for k, v in flat.items()}
    src = {tuple(k): v for k, v in source.items()}
    missing = [k for k in flat if k not in src
               and not (excuse and re.search(excuse, "/".join(k)))]
    extra = [k for k in src if k not in flat]
    shapes = [f"{'/'.join(k)}: file {tuple(np.shape(src[k]))} vs model {tuple(np.shape(flat[k]))}"
              for k in src if k in flat and tuple(np.shape(src[k])) != tuple(np.shape(flat[k]))]
    if missing or extra or shapes:
        parts = [f"{origin} does not match the architecture:"]
        if missing:
            parts.append(f"  {len(missing)} model parameters have no tensor in the file: {_fmt(missing)}")
        if extra:
            parts.append(f"  {len(extra)} file tensors have no model parameter: {_fmt(extra)}")
        if shapes:
            parts.append(f"  {len(shapes)} shape mismatches: " + "; ".join(shapes[:12]))
        raise PortError("\n".join(parts))
    out = {k: (np.asarray(src[k], dtype=getattr(v, "dtype", None) or np.asarray(v).dtype)
               if k in src else v)
           for k, v in flat.items()}
    return traverse_util.unflatten_dict(out)


def merge_with_classifier(template, source: dict, *, origin: str, top: str = "predictions"):
    """strict_merge for a backbone whose classifier layer is `top`: the file's classifier is
    dropped for a model without one, and the model's is excused when the file has none.
    Nothing else may be missing or left over."""
    model_top = top in template.get("params", {})
    file_top = any(k[1] == top for k in source)
    if file_top and not model_top:
        source = {k: v for k, v in source.items() if k[1] != top}
    excuse = rf"^params/{top}/" if model_top and not file_top else None
    return strict_merge(template, source, origin=origin, excuse=excuse)
