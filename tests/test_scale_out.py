"""Data-parallel training (issue #11): the same numbers on 1 and 4 devices, gradient
accumulation equal to one big batch, and a two-process run equal to a one-process run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import scale_worker  # noqa: E402
from conftest import QUICK_SEARCH  # noqa: E402
from helpers import free_port, launch_args, run_launch  # noqa: E402


def _run_devices(tmp_path, n: int) -> dict:
    out = tmp_path / "params.npz"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
           "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, str(ROOT / "tests" / "scale_worker.py"), "devices", str(out)],
                   check=True, env=env, cwd=ROOT, timeout=900)
    return dict(np.load(out))


def _leaves(z, prefix):
    return {k[len(prefix):]: v for k, v in z.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    return _run_devices(tmp_path_factory.mktemp("dev4"), 4)


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["finetune", "stage"])
@pytest.mark.parametrize("batch_size", [8, 6])  # 6: each batch padded to 8 on 4 devices
def test_four_devices_equal_one(four_devices, case, batch_size):
    z = four_devices
    assert int(z["n_devices"]) == 4
    one, four = (_leaves(z, f"{case}|{batch_size}|{m}|") for m in ("1", "all"))
    start = _leaves(z, f"{case}|start|")
    assert one.keys() == four.keys() == start.keys()
    moved = max(float(np.abs(one[k] - start[k]).max()) for k in one)
    assert moved > 1e-3  # training did change the network
    for k in one:
        np.testing.assert_allclose(four[k], one[k], atol=2e-5 + 0.01 * moved, rtol=0, err_msg=k)
    stats = [k for k in one if k.startswith("batch_stats/")]
    if case == "finetune":  # BatchNorm trained: its running statistics agree to rounding
        assert stats
        for k in stats:
            np.testing.assert_allclose(four[k], one[k], atol=2e-5, rtol=1e-5, err_msg=k)


@pytest.mark.e2e
def test_padding_rows_would_shift_batchnorm(four_devices):
    """The control: counting the padding rows in the batch statistics (mask off) moves the
    running statistics far beyond the tolerance the masked run meets."""
    z = four_devices
    one, bad = (_leaves(z, f"finetune|6|{m}|") for m in ("1", "all_unmasked"))
    worst = max(float(np.abs(bad[k] - one[k]).max()) for k in one if k.startswith("batch_stats/"))
    assert worst > 1e-3


def _accum_fit(name, batch_size, k):
    from bt_jax.train import finetune
    spec, model, variables, kw = scale_worker.case(name)
    kw = {**kw, "bn_train": False, "lr": 1e-2}
    fs = finetune.FitSpec(epochs=1, batch_size=batch_size, patience=5, grad_accum_steps=k, **kw)
    res = finetune.fit(model, variables, spec, scale_worker.fit_data(), fs, progress=False)
    return scale_worker.flat(variables), scale_worker.flat(res.last), res.history


@pytest.mark.e2e
@pytest.mark.parametrize("case,k_steps", [("stage", 2), ("finetune", 3)])
def test_grad_accumulation_equals_one_big_batch(case, k_steps):
    """K micro-batches make the update of one batch of 8 (BatchNorm in inference mode):
    2 of 4 rows, or 3 of ceil(8/3) = 3 rows (the last micro-batch part padding)."""
    start, big, hist = _accum_fit(case, 8, 1)
    moved = max(float(np.abs(big[k] - start[k]).max()) for k in big)
    assert moved > 1e-3
    _, acc, hist_k = _accum_fit(case, 8, k_steps)
    for k in big:
        np.testing.assert_allclose(acc[k], big[k], atol=1e-6 + 1e-4 * moved, rtol=0, err_msg=k)
    assert hist_k["train_loss"][0] == pytest.approx(hist["train_loss"][0], rel=1e-5)


def test_processes_other_than_0_write_to_a_private_overlay(tmp_path, monkeypatch):
    """Only process 0 writes into the workdir; another process reads back its own writes
    (model.json read-modify-write) without touching or waiting for the shared files."""
    from bt_jax import io
    monkeypatch.setattr(io, "is_writer", lambda: False)
    monkeypatch.setattr(io, "_OVERLAY", [tmp_path / "overlay"])
    card = tmp_path / "w" / "model.json"
    assert io.write_json(card, {"a": 1}) == card
    assert not card.exists() and io.exists(card) and io.read_json(card) == {"a": 1}
    io.atomic_write(tmp_path / "w" / "cache.npy", lambda f: f.write(b"x"), binary=True, cache=True)
    assert not io.exists(tmp_path / "w" / "cache.npy")  # caches: process 0's or none
    monkeypatch.setattr(io, "_OVERLAY", [])
    monkeypatch.setattr(io, "is_writer", lambda: True)
    io.write_json(card, {"a": 2})
    assert json.loads(card.read_text()) == {"a": 2}


def _train(*extra) -> tuple:
    """The quick method A train pipeline's flags (launch_args / run_launch)."""
    return (*QUICK_SEARCH[1:], "--config.pipeline=train", "--config.train.lr=1e-3",
            "--config.finetune.epochs=2", *extra)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """Two real processes (JAX distributed runtime, coordinator on 127.0.0.1, gloo CPU
    collectives) run the train pipeline as one data-parallel job; the result equals a
    one-process run, and their checkpoint restores in one process."""
    from bt_jax.data.phantoms import write_phantoms
    from bt_jax.inference.loading import load_model
    data = write_phantoms(tmp_path / "data", n_per_class=16, size=128, seed=0)
    w1, w2 = tmp_path / "one", tmp_path / "two"
    port = free_port()
    procs = [subprocess.Popen(
        launch_args(*_train(f"--config.data.dir={data}",
                            f"--config.distributed.coordinator=127.0.0.1:{port}",
                            "--config.distributed.num_processes=2",
                            f"--config.distributed.process_id={i}"),
                    config=QUICK_SEARCH[0], workdir=w2),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "process 0 of 2; 1 local of 2 devices" in outs[0]
    one = run_launch(*_train(f"--config.data.dir={data}"), config=QUICK_SEARCH[0], workdir=w1,
                     cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    for name in ("report.md", "model.json", "metrics.json", "report.html"):
        assert (w2 / name).is_file()
    m1, m2 = (json.loads((w / "metrics.json").read_text()) for w in (w1, w2))
    assert m2["final"]["roc_auc"]["value"] == pytest.approx(m1["final"]["roc_auc"]["value"], abs=1e-6)
    a, b = (scale_worker.flat(load_model(w).variables) for w in (w1, w2))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-5, rtol=1e-4, err_msg=k)
    # The two-process checkpoint, relaunched in one process: nothing retrained, same model.
    again = run_launch(*_train(f"--config.data.dir={data}"), config=QUICK_SEARCH[0], workdir=w2,
                       cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fine-tune: resuming after epoch 1" in again.stderr
    c = scale_worker.flat(load_model(w2).variables)
    assert all(np.array_equal(c[k], b[k]) for k in b)


def test_distributed_and_accumulation_settings_checked():
    from bt_jax.config import base_config, validate
    from bt_jax.config import ConfigError
    c = base_config()
    c.distributed.coordinator, c.distributed.num_processes, c.distributed.process_id = "h:1", 2, 2
    with pytest.raises(ConfigError, match="distributed.process_id"):
        validate(c)
    c = base_config()
    c.train.grad_accum_steps = 0
    with pytest.raises(ConfigError, match="train.grad_accum_steps"):
        validate(c)
