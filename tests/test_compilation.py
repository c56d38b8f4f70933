"""The persistent XLA compilation cache: a second process loads what the first compiled."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from bt_jax import compilation
compilation.MIN_COMPILE_S = 0  # cache even this small program
compilation.enable_cache(sys.argv[1])
with compilation.Tally() as t:
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps(t.summary()))
"""


def _run(cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_second_process_loads_compiled_programs(tmp_path):
    first = _run(tmp_path / "jax")
    assert first["compiled"] >= 1 and first["cache_hits"] == 0
    assert any((tmp_path / "jax").iterdir())
    second = _run(tmp_path / "jax")
    assert second["cache_hits"] == second["programs"] == first["programs"]
    assert second["compiled"] == 0  # every program loaded, none compiled again


def test_compile_on_first_call_compiles_once_and_gives_the_jitted_result():
    import jax
    import jax.numpy as jnp

    from bt_jax import compilation
    jitted = jax.jit(lambda s, x: (s + x.sum(), x * 2), donate_argnums=0)
    step = compilation.CompileOnFirstCall(jitted)
    x = jnp.arange(6.0).reshape(2, 3)
    s, y = step(jnp.float32(1), x)
    first = step.compiled
    s, y = step(s, x + 1)
    assert step.compiled is first                       # one program for one shape
    assert float(s) == 1 + 15 + 21 and float(y.sum()) == 2 * 21
    assert isinstance(compilation.release_freed_memory(), bool)


def test_forward_programs_without_ynnpack_give_the_same_features():
    """The inference programs' XLA options (compilation.forward_compiler_options: no
    YNNPACK fusions on CPU) change which kernels run, not the numbers."""
    import jax
    import numpy as np
    from fast_init import random_variables

    from bt_jax import compilation
    from bt_jax.models import registry
    model = registry.get("vgg16").make()
    v = random_variables(model, 64, seed=5)
    x = jax.random.uniform(jax.random.PRNGKey(6), (2, 64, 64, 3))

    def f(v, x):
        return model.apply(v, x, train=False)[1]["pre_logits"]
    opts = compilation.forward_compiler_options()
    assert opts == (compilation.YNN_OFF if jax.default_backend() == "cpu" else None)
    # an XLA without the option gets its defaults, not a failing compile
    assert not compilation.xla_knows((("xla_cpu_no_such_option_bt_jax", "1"),))
    plain = np.asarray(jax.jit(f)(v, x))
    tuned = np.asarray(jax.jit(f, compiler_options=opts)(v, x))
    np.testing.assert_allclose(tuned, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())


def test_one_cache_folder_for_every_workdir_when_named(tmp_path):
    """BT_JAX_COMPILATION_CACHE replaces W/cache/jax; without it each workdir has its own."""
    code = ("import sys; from bt_jax import compilation; from bt_jax.config import base_config; "
            "print(compilation.enable_for_run(base_config(), sys.argv[1]))")
    from bt_jax import compilation
    env = {k: v for k, v in os.environ.items() if k != compilation.SHARED_CACHE_ENV}

    def folder(workdir, **extra):
        return subprocess.run([sys.executable, "-c", code, str(workdir)], cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=120,
                              env={**env, **extra}).stdout.strip().splitlines()[-1]

    assert folder(tmp_path / "w") == str(tmp_path / "w" / "cache" / "jax")
    shared = tmp_path / "xla"
    assert folder(tmp_path / "w2", **{compilation.SHARED_CACHE_ENV: str(shared)}) == str(shared)
    assert shared.is_dir() and not (tmp_path / "w2").exists()
