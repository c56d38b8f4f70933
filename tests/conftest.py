"""Shared fixtures: the real reference set when present, synthetic data otherwise."""

import os
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


def pytest_configure(config):
    # Tests must never reach a real cache or network.
    os.environ.setdefault("BT_JAX_TEST", "1")
