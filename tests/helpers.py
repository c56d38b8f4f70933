"""Shared test helpers: launch.py run as a user runs it (and SIGKILLed mid-run), what a run
must produce whatever interrupted it, a free local port, parity within a tolerance, and
trained-model workdirs and scans written by hand.

    r = run_launch("--config.pipeline=prepare", config="configs/quickstart.py:quick",
                   workdir=W)                                # r.returncode, r.stdout, r.stderr
    r = launch(workdir, args)                                # waits; r.rc, r.log (stderr lines)
    launch(workdir, args, kill_at="trial 1 ").rc == -9       # SIGKILL right after a log line
    launch(workdir, args, kill_when=lambda: f.exists())      # ... once a condition holds
    outcome(workdir)                                         # metrics, trials, card, stages
    port = free_port()
    assert_close(logits, keras_logits)                       # max |diff| <= 1e-4 x scale
    d = make_model_dir(W)                # model.json + best checkpoint, random-init Lite0, 32 px
    img = head_scan(rng, 64)             # a grey head-like uint8 image
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class Launched(NamedTuple):
    rc: int            # -9 when killed
    log: list[str]     # stderr lines (INFO included: conftest sets BT_JAX_LOG_TO_TERMINAL)


def launch_args(*args, config: str | None = None, workdir=None) -> list[str]:
    """launch.py's command line: --config=<repository>/<config> first (a configs/ file with
    its argument; an absolute path stays as it is), then args, then --workdir."""
    return [sys.executable, str(ROOT / "launch.py"),
            *([f"--config={ROOT / config}"] if config else []), *map(str, args),
            *([f"--workdir={workdir}"] if workdir is not None else [])]


def run_launch(*args, config: str | None = None, workdir=None, cwd=None, env=None,
               timeout: float = 900) -> subprocess.CompletedProcess:
    """launch.py run to its end (launch_args), its output captured: r.returncode, r.stdout,
    r.stderr."""
    return subprocess.run(launch_args(*args, config=config, workdir=workdir), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def launch(workdir, args, kill_at: str | None = None, kill_when=None, timeout: float = 900,
           poll_s: float = 0.02) -> Launched:
    """Runs launch.py with `args` and --workdir. kill_at: SIGKILL right after a stderr line
    containing it (read as it comes); kill_when: SIGKILL once this callable returns True
    (polled every poll_s, e.g. a checkpoint file appearing). With either, fails the test if
    the run ends first; without, if it does not exit 0."""
    p = subprocess.Popen(launch_args(*args, workdir=workdir), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log, killed = [], threading.Event()

    def kill():
        if not killed.is_set():
            killed.set()
            p.send_signal(signal.SIGKILL)

    def read():
        for line in p.stderr:
            log.append(line)
            if kill_at and kill_at in line:
                kill()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    end = time.monotonic() + timeout
    while p.poll() is None and not killed.is_set():
        if kill_when is not None and kill_when():
            kill()
        elif time.monotonic() > end:
            p.kill()
            raise AssertionError(f"launch.py ran past {timeout} s; log tail:\n{''.join(log[-20:])}")
        time.sleep(poll_s)
    rc = p.wait()
    reader.join()
    if killed.is_set():
        return Launched(-9, log)
    want = kill_at or (kill_when and "the kill condition")
    assert not want, f"the run ended before {want!r}; log tail:\n{''.join(log[-20:])}"
    assert rc == 0, "".join(log[-40:])
    return Launched(rc, log)


def outcome(workdir: Path) -> dict:
    """What must not depend on interruptions: metrics, completed trials, the model card."""
    out = {"model": json.loads((workdir / "model.json").read_text()),
           "metrics": json.loads((workdir / "metrics.json").read_text())}
    if (workdir / "trials.csv").exists():
        rows = list(csv.DictReader(open(workdir / "trials.csv")))
        done = [r for r in rows if r["state"] == "COMPLETE"]
        keys = sorted(k for k in done[0] if k.startswith("params_") or k == "value")
        out["trials"] = sorted(tuple(r[k] for k in keys) for r in done)
        assert len(out["trials"]) == len(set(out["trials"]))        # no duplicates
    if (workdir / "stages.json").exists():
        out["stages"] = json.loads((workdir / "stages.json").read_text())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_close(ours, ref) -> None:
    """Parity with a reference: the same shape, max |ours - ref| <= 1e-4 x max(1, max |ref|)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    diff = float(np.max(np.abs(ours - ref)))
    tol = 1e-4 * max(1.0, float(np.max(np.abs(ref))))
    assert diff <= tol, f"max abs diff {diff:.3g} > tol {tol:.3g}"


MODEL_SIZE = 32  # the hand-written models' input size
PREPROCESS = {"crop": True, "crop_threshold": 45, "crop_margin": 0.02, "equalize": "hist",
              "clahe_clip": 2.0, "clahe_tiles": 8, "size": MODEL_SIZE}


def write_model_dir(root: Path, variables, *, head: dict, **card) -> Path:
    """A workdir as a training pipeline leaves it: `variables` as the best fine-tune
    checkpoint, model.json with `card`'s fields over those of a random-init Lite0."""
    import jax
    from bt_jax.train.checkpoint import Checkpoints
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    Checkpoints(root / "checkpoints" / "finetune").save_best(0, jax.device_get(dict(variables)),
                                                             0.5)
    full = {"format": 1, "bt_jax": "0.1.0", "backbone": "efficientnet_lite0",
            "weights_digest": "random-init", "dtype": "float32", "head": head,
            "preprocess": PREPROCESS, "classes": ["no", "yes"], "positive": "yes",
            "threshold": 0.5, "checkpoint": "checkpoints/finetune/best", "synthetic": True}
    full.update(card)
    (root / "model.json").write_text(json.dumps(full, indent=1))
    return root


def make_model_dir(root: Path, *, backbone: str = "efficientnet_lite0", size: int = MODEL_SIZE,
                   units: int = 8, seed: int = 0, module=None, variables=None, extra=None) -> Path:
    """A two-class workdir (model.json + best checkpoint) of `module` (default: `backbone` with
    a gap_dense head of `units`), random init unless `variables` are given."""
    from fast_init import random_variables

    from bt_jax.models import registry as mreg
    from bt_jax.models.heads import Classifier, Head
    if module is None:
        module = Classifier(backbone=mreg.get(backbone).make(), head=Head(units, 0.0))
    if variables is None:
        variables = random_variables(module, size, seed, train=False)
    card = {"backbone": backbone, "head": {"type": "gap_dense", "units": units, "dropout": 0.0},
            "preprocess": {**PREPROCESS, "size": size}, **(extra or {})}
    return write_model_dir(root, variables, **card)


def tiny_model_dir(root: Path, outputs: int = 1, extra=None) -> Path:
    """make_model_dir's random-init Lite0 at 32 px, its head's output scaled so that scans get
    clearly different probabilities (outputs > 1: a multi-class head)."""
    from fast_init import random_variables

    from bt_jax.models import registry as mreg
    from bt_jax.models.heads import Classifier, Head
    module = Classifier(backbone=mreg.get("efficientnet_lite0").make(), head=Head(8, 0.0, outputs))
    variables = random_variables(module, 32, 0, train=False)
    variables["params"]["head"]["out"]["kernel"] *= 10
    return make_model_dir(root, module=module, variables=variables, extra=extra)


def head_scan(rng, size: int = 64):
    """A grey head-like image (uint8 2-D): a filled ellipse of random brightness, noise."""
    import cv2
    img = np.zeros((size, size), np.uint8)
    cv2.ellipse(img, (size // 2, size // 2), (size // 3, size // 2 - 4), 0, 0, 360,
                int(rng.integers(120, 220)), -1)
    img = cv2.add(img, rng.integers(0, 30, img.shape, dtype=np.uint8))
    return img


def write_dicom(path, arr, *, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None,
                frames=1, pixels=True):
    """A 12-bit MR DICOM file of `arr` (frames > 1: a multi-frame one; pixels=False: none)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixels:
        ds.PixelData = np.ascontiguousarray(arr, np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
