"""Orbax checkpoints as plain pytrees: a 'best' slot (by validation loss) and a 'last' slot.

    ck = Checkpoints(W / "checkpoints" / "finetune")
    ck.save_last(epoch, state_tree, meta)            # every epoch: what a killed run resumes
    ck.save_best(epoch, params_tree, val_loss)       # only when val_loss improved
    tree, meta = ck.restore_last(template)           # None if nothing saved yet
    best = ck.restore_best(template)
    ck.mark_done(summary); ck.is_done()
    ck = open_checkpoints(W / "checkpoints", "finetune", fingerprint)   # never stale

`meta` (epoch, history, config, ...) is JSON stored beside the arrays, so a checkpoint
says what made it. `open_checkpoints` puts a run's checkpoints in `<name>-<hash of its
fingerprint>` (everything that produced them: data, backbone, weights, head, schedule,
seed), so a relaunch with other settings starts fresh in a new folder, with one log line
naming what changed, and can never restore weights that another setting made.
Saves are synchronous: a checkpoint on disk is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from bt_jax import io

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


def _manager(path: Path, best: bool) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        best_fn=(lambda m: m["val_loss"]) if best else None, best_mode="min")
    return ocp.CheckpointManager(path.absolute(), options=opts)


def _to_host(tree):
    return jax.tree.map(lambda x: np.asarray(x), tree)


def _save(mgr: ocp.CheckpointManager, step: int, tree, **kw) -> None:
    """Synchronous save that replaces a step already on disk: a run killed after saving
    a step but before recording it (e.g. the starting point) writes the same step again."""
    if step in mgr.all_steps():
        mgr.delete(step)
    mgr.save(step, args=ocp.args.StandardSave(_to_host(tree)), force=True, **kw)
    mgr.wait_until_finished()


class Checkpoints:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._best = _manager(self.root / "best", best=True)
        self._last = _manager(self.root / "last", best=False)

    def _write_meta(self, name: str, meta: dict) -> None:
        io.write_json(self.root / f"{name}.json", {"format": FORMAT_VERSION, **meta},
                      default=float)

    def _read_meta(self, name: str) -> dict | None:
        p = self.root / f"{name}.json"
        return io.read_json(p) if io.exists(p) else None

    def save_last(self, epoch: int, tree, meta: dict) -> None:
        _save(self._last, epoch, tree)
        self._write_meta("last", {"epoch": epoch, **meta})

    def save_best(self, epoch: int, tree, val_loss: float, meta: dict | None = None) -> None:
        """epoch -1 is the starting point (stored as step 0; epoch e as step e + 1)."""
        _save(self._best, epoch + 1, tree, metrics={"val_loss": float(val_loss)})
        self._write_meta("best", {"epoch": epoch, "val_loss": float(val_loss), **(meta or {})})

    def restore_last(self, template):
        step = self._last.latest_step()
        meta = self._read_meta("last")
        if step is None or meta is None or meta.get("epoch") != step:
            return None, None
        tree = self._last.restore(step, args=ocp.args.StandardRestore(_to_host(template)))
        return tree, meta

    def restore_best(self, template):
        if isinstance(template, dict) and "params" in template:
            template = {"batch_stats": {}, **template}  # BatchNorm-free models have none
        step = self._best.best_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint in {self.root / 'best'}")
        return self._best.restore(step, args=ocp.args.StandardRestore(_to_host(template)))

    def best_meta(self) -> dict | None:
        return self._read_meta("best")

    def mark_done(self, summary: dict) -> None:
        self._write_meta("done", summary)

    def is_done(self) -> bool:
        return io.exists(self.root / "done.json")

    def done_meta(self) -> dict | None:
        return self._read_meta("done")


def fingerprint_key(fingerprint: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {str(a)[:40]} -> {str(b)[:40]}")
    return out


def open_checkpoints(parent: Path, name: str, fingerprint: dict) -> Checkpoints:
    """Checkpoints in parent/<name>-<fingerprint key>; fingerprint.json says what made them.

    A folder made by other settings is left untouched (never reused, never deleted); the
    first time a fingerprint is seen beside an older one, one line says what changed."""
    parent = Path(parent)
    plain = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    root = parent / f"{name}-{fingerprint_key(fingerprint)}"
    if not root.exists():
        older = sorted((p for p in parent.glob(f"{name}-*/fingerprint.json")),
                       key=lambda p: p.stat().st_mtime)
        if older:
            diff = _changed(json.loads(older[-1].read_text()), plain)
            log.warning("%s: checkpoints in %s were made with other settings (%s); starting "
                        "fresh in %s", name, older[-1].parent.name, "; ".join(diff[:4]) or "?",
                        root.name)
    ck = Checkpoints(root)
    if not io.exists(root / "fingerprint.json"):
        io.write_json(root / "fingerprint.json", plain)
    return ck
