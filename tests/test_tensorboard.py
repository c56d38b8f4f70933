"""TensorBoard event files: read back with the TFRecord framing and tensorboardX's protobuf
classes, and compared with the run's own files."""

import csv
import json
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optuna
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from bt_jax.config import base_config
from bt_jax.models.heads import Classifier, Head
from bt_jax.reporting import tensorboard
from bt_jax.train import finetune, head, partitions
from bt_jax.train.checkpoint import Checkpoints


def read_run(path):
    """{tag: [(step, value)]} of every event file in a run folder: scalars as floats, text
    as str; each record's length and data CRCs checked."""
    out = {}
    for f in sorted(path.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            header = data[i:i + 8]
            (n,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked_crc32c(header)
            rec = data[i + 12:i + 12 + n]
            assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == masked_crc32c(rec)
            i += 16 + n
            event = event_pb2.Event.FromString(rec)
            for v in event.summary.value:
                value = (v.tensor.string_val[0].decode() if v.HasField("tensor")
                         else v.simple_value)
                out.setdefault(v.tag, []).append((event.step, value))
    return out


def _steps(run, tag):
    return [s for s, _ in run[tag]]


def _values(run, tag):
    return [v for _, v in run[tag]]


def _history(losses):
    n = len(losses)
    return {"train_loss": list(losses), "train_acc": [0.5] * n, "val_loss": list(losses),
            "val_acc": [0.25] * n, "lr": [1e-3] * n, "initial_val_loss": 0.7}


def test_a_resumed_run_rewrites_its_folder_without_repeating_a_step(tmp_path):
    c = base_config()
    # Launch 1: epochs 0-2 logged, then killed before epoch 2's checkpoint was saved.
    with tensorboard.epoch_log(c, tmp_path, "finetune") as log:
        for n in (1, 2, 3):
            log(_history([1.0, 0.9, 0.8][:n]))
    # Launch 2 resumes after epoch 1: epoch 2 again (other numbers), then epoch 3.
    with tensorboard.epoch_log(c, tmp_path, "finetune") as log:
        log(_history([1.0, 0.9, 0.7]))
        log(_history([1.0, 0.9, 0.7, 0.6]))
    run = read_run(tmp_path / "tensorboard" / "finetune")
    assert set(run) == {"train/loss", "train/accuracy", "val/loss", "val/accuracy",
                        "train/learning_rate"}
    assert _steps(run, "val/loss") == [0, 1, 2, 3]
    np.testing.assert_allclose(_values(run, "val/loss"), [1.0, 0.9, 0.7, 0.6], rtol=1e-6)
    assert len(list((tmp_path / "tensorboard" / "finetune").iterdir())) == 1


def test_off_writes_nothing(tmp_path):
    c = base_config()
    c.report.tensorboard = False
    with tensorboard.epoch_log(c, tmp_path, "finetune") as log:
        assert log is None
    tensorboard.write_history(c, tmp_path, "head_final", _history([1.0]))
    tensorboard.write_cv_repeats(c, tmp_path, "cv_repeats", {"per_repeat": []})
    assert not (tmp_path / "tensorboard").exists()


def test_fold_histories_and_trials(tmp_path):
    c = base_config()
    nan = float("nan")
    curves = np.array([[0.9, 0.8, nan], [0.7, nan, nan]])  # fold 1 stopped after one epoch
    res = head.FoldResults(train_loss=curves, train_acc=curves, val_loss=curves,
                           val_acc=curves, best_epoch=np.array([1, 0]),
                           stopped_epoch=np.array([-1, 0]), epochs_run=np.array([2, 1]),
                           val_loss_best=None, val_acc_best=None, val_auc=None, val_prob=None,
                           params=None)
    (tmp_path / "tensorboard" / "head_cv" / "fold_7").mkdir(parents=True)  # an earlier k
    tensorboard.write_fold_histories(c, tmp_path, "head_cv", [
        tensorboard.head_history(res.fold(f), 1e-4) for f in range(2)])
    tb = tmp_path / "tensorboard"
    assert sorted(p.name for p in (tb / "head_cv").iterdir()) == ["fold_0", "fold_1"]
    f0, f1 = read_run(tb / "head_cv" / "fold_0"), read_run(tb / "head_cv" / "fold_1")
    assert _steps(f0, "val/loss") == [0, 1] and _steps(f1, "train/loss") == [0]
    np.testing.assert_allclose(_values(f0, "train/learning_rate"), [1e-4, 1e-4], rtol=1e-6)

    study = optuna.create_study(direction="maximize")
    for value in (0.5, None, 0.75, 0.6):
        t = study.ask({"units": optuna.distributions.CategoricalDistribution([32, 64])})
        if value is None:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        else:
            t.set_user_attr("val_auc", value + 0.1)
            study.tell(t, value)
    tensorboard.write_trials(c, tmp_path, "search", study.trials)
    s = read_run(tb / "search")
    assert _steps(s, "search/objective") == [0, 2, 3] == _steps(s, "search/trial/text_summary")
    np.testing.assert_allclose(_values(s, "search/best_objective"), [0.5, 0.75, 0.75], rtol=1e-6)
    np.testing.assert_allclose(_values(s, "search/val_auc"), [0.6, 0.85, 0.7], rtol=1e-6)
    assert f"| units | {study.trials[2].params['units']} |" in s["search/trial/text_summary"][1][1]


def test_epoch_history_reports_the_scheduled_rate():
    h = _history([1.0, 0.9, 0.8])
    assert finetune.epoch_history(h, 1e-3, 4) is h
    sched = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 4, 12, end_value=0.0)
    lrs = finetune.epoch_history(h, sched, 4)["lr"]
    np.testing.assert_allclose(lrs, [float(sched(s)) for s in (3, 7, 11)], rtol=1e-6)
    assert h["lr"] == [1e-3] * 3  # the history itself is left as it is


class Killed(Exception):
    """Stands for SIGKILL after an epoch was logged, before its checkpoint was saved."""


class OneConv(nn.Module):
    """A backbone by the contract ((logits, out) with out["pre_logits"]), small to compile."""

    @nn.compact
    def __call__(self, x, train: bool = False, rows=None):   # the backbone contract
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return None, {"pre_logits": x.mean(axis=(1, 2))}


def test_a_fine_tune_killed_and_resumed_logs_each_epoch_once(tmp_path):
    """Real `finetune.fit` runs: the event files hold every epoch once, with the numbers of
    the run's history file and the scheduled learning rate."""
    model = Classifier(backbone=OneConv(), head=Head(8, 0.0))
    variables = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1, 16, 16, 3))))
    rng = np.random.default_rng(0)
    data = finetune.FitData(images=rng.uniform(0, 1, (20, 16, 16, 3)).astype(np.float32),
                            labels=np.arange(20) % 2, train_src=np.arange(12),
                            train_keys=np.zeros((12, 2), np.uint32),
                            train_aug=np.zeros(12, bool), val_idx=np.arange(12, 20))
    fs = finetune.FitSpec(epochs=3, batch_size=4, lr=1e-3, trainable="all", patience=9,
                          schedule="warmup_cosine", warmup_epochs=1.0)
    c = base_config()

    def fit(on_epoch):
        return finetune.fit(model, variables, None, data, fs, ckpt=Checkpoints(tmp_path / "ck"),
                            progress=False, on_epoch=on_epoch)

    def killer(log):
        def on_epoch(history):
            log(history)
            if len(history["val_loss"]) == 2:
                raise Killed
        return on_epoch
    with pytest.raises(Killed), tensorboard.epoch_log(c, tmp_path, "finetune") as log:
        fit(killer(log))
    with tensorboard.epoch_log(c, tmp_path, "finetune") as log:
        res = fit(log)
    assert res.resumed_from == 0  # epoch 1 was logged but never saved: it ran again
    hist = json.loads((tmp_path / "ck" / "done.json").read_text())["history"]
    run = read_run(tmp_path / "tensorboard" / "finetune")
    for key, tag in tensorboard.TAGS[:4]:
        assert _steps(run, tag) == [0, 1, 2]
        np.testing.assert_allclose(_values(run, tag), hist[key], rtol=1e-6)
    sched = partitions.lr_schedule(fs, 3)
    np.testing.assert_allclose(_values(run, "train/learning_rate"),
                               [float(sched(s)) for s in (2, 5, 8)], rtol=1e-6)


@pytest.mark.e2e  # the quick search run is shared with the other e2e tests of method A
def test_quick_search_run_writes_what_its_files_say(quick_search_run):
    w, _ = quick_search_run
    tb = w / "tensorboard"
    assert {p.name for p in tb.iterdir()} >= {"search", "head_final", "finetune", "cv_repeats"}
    metrics = json.loads((w / "metrics.json").read_text())
    with open(w / "trials.csv") as f:
        trials = [r for r in csv.DictReader(f) if r["state"] == "COMPLETE"]
    s = read_run(tb / "search")
    assert _steps(s, "search/objective") == [int(r["number"]) for r in trials]
    np.testing.assert_allclose(_values(s, "search/objective"),
                               [float(r["value"]) for r in trials], rtol=1e-6)
    assert max(_values(s, "search/best_objective")) == pytest.approx(
        max(float(r["value"]) for r in trials), rel=1e-6)

    (done,) = (w / "checkpoints").glob("finetune-*/done.json")
    hist = json.loads(done.read_text())["history"]
    ft = read_run(tb / "finetune")
    for key, tag in tensorboard.TAGS:
        assert _steps(ft, tag) == list(range(len(hist[key])))
        np.testing.assert_allclose(_values(ft, tag), hist[key], rtol=1e-6)

    hf = read_run(tb / "head_final")
    n = len(hf["val/loss"])
    assert 1 <= n <= 3 and all(_steps(hf, tag) == list(range(n)) for _, tag in tensorboard.TAGS)
    np.testing.assert_allclose(_values(hf, "train/learning_rate"),
                               [metrics["best_trial"]["lr"]] * n, rtol=1e-6)
    # fine-tuning starts from the final head's restored best weights
    assert min(_values(hf, "val/loss")) == pytest.approx(
        metrics["frozen_vs_finetuned"]["frozen"]["val_loss"], abs=1e-3)

    cv = read_run(tb / "cv_repeats")
    reps = metrics["cv"]["per_repeat"]
    assert _steps(cv, "cv/head_accuracy") == [r["repeat"] for r in reps]
    np.testing.assert_allclose(_values(cv, "cv/logistic_roc_auc"),
                               [r["logistic"]["roc_auc"] for r in reps], rtol=1e-6)
