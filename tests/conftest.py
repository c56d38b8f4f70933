"""Shared fixtures: the real reference set when present, synthetic data otherwise."""

import os
import tempfile
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain_mri"


@pytest.fixture(scope="session")
def real_data_dir():
    if not (REAL_DATA / "yes").is_dir():
        pytest.skip(f"reference set not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    from bt_jax.data import phantoms
    return phantoms.write_phantoms(tmp_path_factory.mktemp("phantoms"), n_per_class=24, size=96,
                                   seed=0)


@pytest.fixture
def small_config():
    from bt_jax.config import base_config
    c = base_config()
    c.preprocess.size = 64
    c.split.k = 3
    return c


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A trained model's workdir written by hand (helpers.make_model_dir: random-init Lite0,
    two classes, 32 px); a test module may define its own."""
    from helpers import make_model_dir
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir):
    """The module's model_dir, loaded as predict loads it."""
    from bt_jax import inference
    return inference.load_model(model_dir)


QUICK_SEARCH = ("configs/quickstart.py:quick", "--config.weights.random_init=True")


def launch_quick_search(workdir, *extra, env=None):
    """launch.py with the quick method A config (phantoms, random-init Lite0)."""
    from helpers import run_launch
    return run_launch(*QUICK_SEARCH[1:], *extra, config=QUICK_SEARCH[0], workdir=workdir,
                      env=env)


def own_xla_cache() -> dict:
    """The environment of a launch that keeps its compiled programs in W/cache/jax (what a
    test of that cache needs), without the suite's shared folder."""
    return {k: v for k, v in os.environ.items() if k != "BT_JAX_COMPILATION_CACHE"}


@pytest.fixture(scope="session")
def quick_search_run(tmp_path_factory):
    """One uninterrupted quick method A run, shared by the tests that read or compare it."""
    w = tmp_path_factory.mktemp("method_a")
    r = launch_quick_search(w, env=own_xla_cache())
    assert r.returncode == 0, r.stderr[-4000:]
    return w, r


DEFAULT_SUITE = "not slow and not e2e"   # pyproject addopts
FAST_COMPILE = "--xla_backend_optimization_level=1"


def pytest_configure(config):
    # launch.py subprocesses keep INFO on the terminal (tests read it); one test checks the
    # quiet console without this (test_launch.py).
    os.environ.setdefault("BT_JAX_LOG_TO_TERMINAL", "1")
    # Every launch.py subprocess shares one XLA compilation cache (compiling is most of a
    # quick launch's time); programs are keyed by their HLO, flags and JAX version, so a
    # warm folder never serves a stale one. The tests of the per-workdir cache opt out.
    os.environ.setdefault("BT_JAX_COMPILATION_CACHE",
                          str(Path(tempfile.gettempdir()) / f"bt_jax_test_xla_cache_{os.getuid()}"))
    # Workers and subprocesses start with glibc's huge-page tunable, as launch.py runs do
    # (bt_jax/hugepages.py).
    from bt_jax import hugepages
    if hugepages.wanted_here():
        os.environ.update(hugepages.env_with_tunable(os.environ))
    # The default suite is compile-bound (small shapes, ~200 programs): XLA:CPU's backend
    # optimisation level 1 compiles ~25% faster with the same numbers (no fast-math either
    # way) and about the same run time; the whole suite 7:30 vs 8:50 on 2 cores. The e2e
    # and slow suites (long runs, launched as users launch them) keep XLA's defaults.
    # Set before any test imports jax; workers and launch.py subprocesses inherit it.
    flags = os.environ.get("XLA_FLAGS", "")
    if config.option.markexpr == DEFAULT_SUITE and "optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE}".strip()
