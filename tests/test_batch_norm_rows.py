"""BatchNorm's batch statistics over the rows given (models.common.BatchNorm): `rows` is an
argument of every backbone's `__call__`, so the padding rows of a fixed-shape batch leave
the statistics as the real rows alone give them, and a step with rows and one without are
two programs (a trace-time switch, not part of jit's key, reused the first one's program)."""

import jax
import jax.numpy as jnp
import numpy as np
from fast_init import random_variables

from bt_jax.models import registry


def test_statistics_over_the_real_rows_alone():
    model = registry.get("mobilenet").make()
    v = random_variables(model, 32, seed=1)
    real = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
    padded = jnp.concatenate([real, jnp.ones((2, 32, 32, 3))])    # two padding rows
    rows = jnp.array([True, True, False, False])

    @jax.jit
    def stats(v, x, rows):
        _, upd = model.apply(v, x, train=True, rows=rows, mutable=["batch_stats"])
        return upd["batch_stats"]
    want, got, unmasked = stats(v, real, None), stats(v, padded, rows), stats(v, padded, None)
    assert stats._cache_size() == 3        # (real, None), (padded, rows), (padded, None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), got, want)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), unmasked, want))
    assert max(moved) > 1e-3               # the padding would have shifted them
