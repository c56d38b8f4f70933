"""TensorBoard event files: one run folder per thing trained, under W/tensorboard/.

    with tensorboard.epoch_log(config, W, "finetune") as on_epoch:   # None when off
        finetune.fit(..., on_epoch=on_epoch)                        # a row as each epoch ends
    tensorboard.write_history(config, W, "head_final", tensorboard.head_history(res, hp.lr))
    tensorboard.write_trials(config, W, "search", study.get_trials(deepcopy=False))
    # then: tensorboard --logdir W/tensorboard

Steps are true epoch indices (trial numbers for the search, repeats for repeated CV). A
run folder is rewritten whole the first time a launch writes to it: a resumed fine-tune's
first epoch writes again the epochs its checkpoint holds, then appends, so no step appears
twice and no stale curve (other settings, a killed launch's unsaved epoch) lingers; a
relaunch that trains nothing leaves the folder as it is. Only process 0 writes
(`io.is_writer`). The writer is tensorboardX (numpy + protobuf; no TensorFlow or PyTorch),
imported when first used. Event files are streams, not atomic writes: readers stop at a
half-written last record, and the next launch rewrites the folder.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import numpy as np

from bt_jax import io

# fine-tune history key -> TensorBoard tag (metric keys prefixed train/, val/)
TAGS = (("train_loss", "train/loss"), ("train_acc", "train/accuracy"),
        ("val_loss", "val/loss"), ("val_acc", "val/accuracy"), ("lr", "train/learning_rate"))


# ----------------------------------------------------------------------------- pure helpers

def history_rows(history: dict) -> list[dict]:
    """Per epoch {tag: value} of a fine-tune history (lists per key, index = epoch)."""
    n = len(history["val_loss"])
    return [{tag: float(history[key][e]) for key, tag in TAGS if key in history}
            for e in range(n)]


def head_history(res, lr: float) -> dict:
    """A head's curves (one lane of `head.FoldResults`, no fold axis) as a fine-tune
    history: the epochs it ran; its learning rate is constant."""
    n = int(res.epochs_run)
    out = {key: [float(v) for v in np.asarray(getattr(res, key))[:n]]
           for key in ("train_loss", "train_acc", "val_loss", "val_acc")}
    return {**out, "lr": [float(lr)] * n}


def trial_rows(trials) -> list[tuple[int, dict, str]]:
    """(trial number, scalars, text) of every completed Optuna trial, by number: its
    objective, the best so far, its validation AUC (when recorded) and its parameters."""
    done = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
    rows, best = [], -math.inf
    for t in done:
        best = max(best, t.value)
        scalars = {"search/objective": float(t.value), "search/best_objective": float(best)}
        if "val_auc" in t.user_attrs:
            scalars["search/val_auc"] = float(t.user_attrs["val_auc"])
        text = (f"trial {t.number}: objective {t.value:.4f}\n\n| parameter | value |\n|---|---|\n"
                + "".join(f"| {k} | {v} |\n" for k, v in sorted(t.params.items())))
        rows.append((t.number, scalars, text))
    return rows


def cv_repeat_rows(est: dict) -> list[dict]:
    """Per repeat of `method_a.estimates.repeated_cv`: out-of-fold accuracy and ROC AUC of
    the head and of the logistic baseline on the same folds."""
    return [{f"cv/{model}_{m}": float(r[model][m]) for model in ("head", "logistic")
             for m in ("accuracy", "roc_auc")} for r in est["per_repeat"]]


# ----------------------------------------------------------------------------- writing

def run_dir(config, workdir, name: str) -> Path | None:
    """W/tensorboard/<name>, or None when `report.tensorboard` is off or this process
    is not the writer."""
    if not config.report.tensorboard or not io.is_writer():
        return None
    return Path(workdir) / "tensorboard" / name


def _open(path: Path):
    """A writer in `path` after its old event files are removed (the folder is rewritten)."""
    from tensorboardX import SummaryWriter
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("events.out.tfevents.*"):
        old.unlink()
    # A TensorBoard already watching the folder drops what it read (purge from step 0).
    return SummaryWriter(str(path), purge_step=0, flush_secs=30)


def _scalars(writer, row: dict, step: int) -> None:
    for tag, value in row.items():
        writer.add_scalar(tag, value, step)


class EpochLog:
    """`on_epoch(history)`: the first call rewrites the folder with every epoch so far,
    later calls append the new ones; flushed each time, so a watching TensorBoard is live."""

    def __init__(self, path: Path):
        self.path, self.writer, self.written = path, None, 0

    def __call__(self, history: dict) -> None:
        rows = history_rows(history)
        if self.writer is None:
            self.writer = _open(self.path)
        for step in range(self.written, len(rows)):
            _scalars(self.writer, rows[step], step)
        self.written = len(rows)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def epoch_log(config, workdir, name: str):
    """An `EpochLog` for W/tensorboard/<name> (None when off), closed on exit."""
    path = run_dir(config, workdir, name)
    if path is None:
        yield None
        return
    log = EpochLog(path)
    try:
        yield log
    finally:
        log.close()


def write_history(config, workdir, name: str, history: dict) -> None:
    """A whole training history at once (a head trained in one compiled call)."""
    with epoch_log(config, workdir, name) as log:
        if log is not None:
            log(history)


def write_fold_histories(config, workdir, name: str, histories: list[dict]) -> None:
    """W/tensorboard/<name>/fold_<f>, one run per fold (folds of an earlier launch removed)."""
    path = run_dir(config, workdir, name)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
    for f, history in enumerate(histories):
        write_history(config, workdir, f"{name}/fold_{f}", history)


def write_trials(config, workdir, name: str, trials) -> None:
    """The search: per trial number its objective, the best so far and its parameters."""
    path = run_dir(config, workdir, name)
    if path is None:
        return
    writer = _open(path)
    try:
        for step, scalars, text in trial_rows(trials):
            _scalars(writer, scalars, step)
            writer.add_text("search/trial", text, step)
    finally:
        writer.close()


def write_cv_repeats(config, workdir, name: str, est: dict) -> None:
    """Repeated cross-validation: per repeat, the head's and the logistic baseline's scores."""
    path = run_dir(config, workdir, name)
    if path is None:
        return
    writer = _open(path)
    try:
        for step, row in enumerate(cv_repeat_rows(est)):
            _scalars(writer, row, step)
    finally:
        writer.close()
