"""Random variables of a module's shapes without running `module.init`.

Initialising EfficientNet-Lite0 runs its forward pass: ~35 s eagerly or ~20 s to compile
on a 2-core CPU, the largest cost of several test modules. Tests that only need *some*
weights (loading, saving, apply-vs-pipeline agreement) take these instead: `eval_shape`
gives the tree, numpy fills it (He-scaled kernels, unit BatchNorm), deterministic per seed.
"""

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(module, size: int, seed: int = 0, **init_kwargs):
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, size, size, 3)), **init_kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = getattr(path[-1], "key", "")
        if name in ("scale", "var"):
            return np.ones(s.shape, s.dtype)
        if name in ("bias", "mean"):
            return np.zeros(s.shape, s.dtype)
        fan_in = max(1, int(np.prod(s.shape[:-1])))
        return (rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)).astype(s.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)
