"""Feature extraction: padding, one compilation, sharding over devices, cache."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fast_init import random_variables

from bt_jax import features
from bt_jax.models import registry

ROOT = Path(__file__).resolve().parents[1]


def _tiny():
    module = registry.get("mobilenet").make()
    return module, random_variables(module, 32)


def test_padding_order_and_single_compilation():
    module, variables = _tiny()
    x = np.random.default_rng(0).uniform(0, 1, (21, 32, 32, 3)).astype(np.float32)
    fn = features.make_extract_fn(module)
    out = features.extract_features(module, variables, x, batch_size=8, fn=fn)
    assert out.shape == (21, 1024) and out.dtype == np.float32
    assert fn._cache_size() == 1  # 3 batches (the last padded), one compilation
    direct = np.asarray(module.apply(variables, jnp.asarray(x[5:6]), train=False)[1]["pre_logits"])
    np.testing.assert_allclose(out[5:6], direct, rtol=1e-4, atol=1e-5)


def test_fills_a_given_array_in_place():
    """out=: rows land in the caller's array (a slice of a grown one), no new array; what
    method A does for the augmented copies' features after the originals'."""
    module, variables = _tiny()
    x = np.random.default_rng(1).uniform(0, 1, (13, 32, 32, 3)).astype(np.float32)
    fn = features.make_extract_fn(module)
    first = features.extract_features(module, variables, x[:9], batch_size=4, fn=fn)
    first.resize((13, first.shape[1]))
    got = features.extract_features(module, variables, x[9:], batch_size=4, fn=fn, out=first[9:])
    assert np.shares_memory(got, first)
    whole = features.extract_features(module, variables, x, batch_size=4, fn=fn)
    np.testing.assert_allclose(first, whole, rtol=1e-5, atol=1e-6)


def test_cache_reuses_and_keys_on_inputs(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.ones((3, 2))
    a = features.cached(tmp_path, {"backbone": "x", "images": "abc"}, compute)
    b = features.cached(tmp_path, {"backbone": "x", "images": "abc"}, compute)
    assert len(calls) == 1 and np.array_equal(a, b)
    features.cached(tmp_path, {"backbone": "x", "images": "abd"}, compute)
    assert len(calls) == 2


def test_a_process_other_than_0_keeps_its_own_features(tmp_path, monkeypatch):
    """Process 0 writes the cache, perhaps after the others have finished computing: another
    process returns what it computed, aligned, and never reads a file not yet there (the
    two-process README command once died on that FileNotFoundError)."""
    from bt_jax import io
    monkeypatch.setattr(io, "is_writer", lambda: False)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    got = features.cached(tmp_path, {"k": 2}, lambda: x)
    np.testing.assert_array_equal(got, x)
    assert got.ctypes.data % features.ALIGN == 0
    assert not list((tmp_path / "cache" / "features").glob("*.npy"))  # process 0's to write


def test_cached_features_alias_on_the_device(tmp_path):
    """Computed or reused, cached features come back 64-byte aligned, so the head's
    `jax.device_put` on a CPU uses them in place: one copy of N x D, not two."""
    x = np.random.default_rng(0).standard_normal((1001, 37)).astype(np.float32)
    for _ in range(2):   # computed, then read from the cache
        got = features.cached(tmp_path, {"k": 1}, lambda: x)
        np.testing.assert_array_equal(got, x)
        assert got.ctypes.data % features.ALIGN == 0 and got.flags.c_contiguous
        if jax.default_backend() == "cpu":
            assert jax.device_put(got).unsafe_buffer_pointer() == got.ctypes.data
    bad = tmp_path / "cache" / "features" / "cut.npy"
    np.save(bad, x)
    bad.write_bytes(bad.read_bytes()[:-8])
    with pytest.raises(OSError, match="truncated"):
        features.load_aligned(bad)


@pytest.mark.e2e
def test_sharded_over_four_host_devices():
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from bt_jax import features\n"
        "from bt_jax.models import registry\n"
        "assert len(jax.devices()) == 4, jax.devices()\n"
        "m = registry.get('mobilenet').make()\n"
        "v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))\n"
        "x = np.random.default_rng(0).uniform(0, 1, (10, 32, 32, 3)).astype(np.float32)\n"
        "out = features.extract_features(m, v, x, batch_size=6)\n"
        "ref = np.asarray(m.apply(v, jnp.asarray(x), train=False)[1]['pre_logits'])\n"
        "np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)\n"
        "print('OK', out.shape)\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0 and "OK (10, 1024)" in r.stdout, r.stderr[-2000:]
