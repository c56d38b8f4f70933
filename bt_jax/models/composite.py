"""Feature recipes: several backbones' pooled features concatenated, flip-averaged, or
with an earlier stage's pooled features beside the last, as one backbone-shaped module.

    stack = FeatureStack(branches=(Branch("efficientnet_lite0", make0, 224, "stage6"), ...),
                         flip=True, early=False, depthwise="auto", pointwise="auto")
    _, out = stack.apply(variables, x01)   # out["pre_logits"] (B, sum of widths)
                                           # out["features"]: tuple of the pooled maps

Every backbone in the registry has the same call signature, so the stack is a backbone
to everything above it: feature extraction, the head search, fine-tuning (`Classifier`),
`predict` and Grad-CAM. Its parameters are the branches' own, under their names
(variables["params"]["efficientnet_lite0"], ...), so ported weights load unchanged.

Sizes. Each branch sees the input rescaled by its native resolution relative to the
largest one's (an input of 260 px gives Lite0 224, Lite1 240, Lite2 260; no rescaling
when there is one branch), so one preprocessed image serves every branch.

Options. `flip`: each map is the mean of the map of the image and the mirrored map of
the horizontally flipped image (both in one batch), so its pooled features are the
flip-averaged features. `early`: a branch's map named `Branch.early` (e.g. EfficientNet's
"stage6") is pooled too. pre_logits is the concatenation of the global average pool of
every map in out["features"], in order, which is what Grad-CAM differentiates through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bt_jax.models.common import global_avg_pool


class Branch(NamedTuple):
    name: str                      # the backbone's registry name: its parameters' scope
    make: Callable[..., Any]       # make(name=, depthwise=, pointwise=, conv3x3=) -> the backbone
    native_size: int
    early: str | None = None       # out[...] key pooled with option "early"


def branch_sizes(side: int, natives) -> list[int]:
    """Each branch's input side for an input of `side` px: scaled by native / largest."""
    top = max(natives)
    return [round(side * n / top) for n in natives]


class FeatureStack(nn.Module):
    branches: tuple
    flip: bool = False
    early: bool = False
    depthwise: str = "auto"        # every branch's DepthwiseConv, 1x1 and 3x3 Conv choices
    pointwise: str = "auto"
    conv3x3: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):
        n, side = x.shape[0], x.shape[1]
        if self.flip:
            x = jnp.concatenate([x, x[:, :, ::-1]])
            rows = None if rows is None else jnp.concatenate([rows, rows])
        maps = []
        for b, s in zip(self.branches, branch_sizes(side, [b.native_size for b in self.branches]),
                        strict=True):
            xb = x if s == side else jax.image.resize(x, (x.shape[0], s, s, x.shape[3]),
                                                      "linear", antialias=True)
            make = b.make(name=b.name, depthwise=self.depthwise, pointwise=self.pointwise,
                          conv3x3=self.conv3x3)
            _, out = make(xb, train=train, rows=rows)
            for key in ((b.early,) if self.early else ()) + ("features",):
                m = out[key]
                maps.append((m[:n] + m[n:, :, ::-1]) / 2 if self.flip else m)
        pooled = jnp.concatenate([global_avg_pool(m) for m in maps], axis=-1)
        return None, {"features": tuple(maps), "pre_logits": pooled}
