"""End-to-end: launch.py as a user runs it."""

import json
import subprocess

import pytest
from helpers import launch_args, run_launch

QUICK = "configs/quickstart.py:quick"


def test_prepare_on_phantoms(tmp_path):
    r = run_launch("--config.pipeline=prepare", config=QUICK, workdir=tmp_path / "w",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SYNTHETIC" in r.stdout and "32 files seen" in r.stdout
    m = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert m["synthetic"] and m["summary"]["used"] == 32
    assert json.loads((tmp_path / "w" / "config.json").read_text())["pipeline"] == "prepare"


@pytest.mark.e2e
def test_prepare_reference_set_with_overrides(tmp_path, real_data_dir):
    r = run_launch("--config.pipeline=prepare", f"--config.data.dir={real_data_dir}",
                   "--config.preprocess.equalize=clahe", config=QUICK, workdir=tmp_path / "w",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "253 files seen, 228 used, 25 exact duplicates in 22 groups" in r.stdout


def _one_line_error(r, expected: str):
    """A user's mistake: exit status 2, `error: ...` naming it, a hint, no traceback."""
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and expected in lines[-2], lines[-3:]
    assert lines[-1].startswith("hint: ") and "Traceback" not in r.stderr


def test_bad_config_value_is_a_clear_error(tmp_path):
    r = run_launch("--config.preprocess.equalize=gamma", config=QUICK, workdir=tmp_path / "w",
                   cwd=tmp_path)
    _one_line_error(r, "config.preprocess.equalize: expected one of")
    r = run_launch("--config.search.units=", "--verbose", config=QUICK, workdir=tmp_path / "w",
                   cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "config.search.units" in r.stderr


def test_missing_data_folder_is_a_clear_error(tmp_path):
    r = run_launch(f"--config.data.dir={tmp_path / 'nope'}", config=QUICK,
                   workdir=tmp_path / "w", cwd=tmp_path)
    _one_line_error(r, "does not exist")


def test_workdir_that_is_a_file_is_one_line_and_exit_3(tmp_path):
    f = tmp_path / "not_a_folder"
    f.write_text("mine")
    r = run_launch(config=QUICK, workdir=f, cwd=tmp_path)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"error: --workdir={f} is a file, not a folder" in r.stderr
    assert f.read_text() == "mine"  # nothing of the user's is touched


def test_one_line_sorts_failures():
    import errno
    from bt_jax import errors
    full = OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/x")
    wrapped = RuntimeError("orbax save failed")
    wrapped.__cause__ = full
    msg, hint, status = errors.one_line(wrapped, stage="fine-tune", workdir="W")
    assert status == 3 and msg == "the disk is full writing /w/checkpoints/x (during fine-tune)"
    assert "run the same command again to resume" in hint
    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.1GiB")
    msg, hint, status = errors.one_line(oom, stage="fine-tune", workdir="W")
    assert status == 3 and msg.startswith("out of memory during fine-tune") and "batch" in hint
    assert errors.one_line(KeyboardInterrupt(), stage="search", workdir="W")[::2] == (
        "interrupted during search", 130)
    assert errors.one_line(ValueError("a bug"), stage="x", workdir="W") is None


@pytest.mark.e2e
def test_ctrl_c_is_one_line_and_the_relaunch_resumes(tmp_path):
    """SIGINT sent to a real run once its search has started."""
    import signal
    import time
    w = tmp_path / "w"
    flags = {"config": QUICK, "workdir": w}
    # 40 trials: the search lasts seconds even where the compilation cache makes trials quick
    opts = ("--config.weights.random_init=True", "--config.search.trials=40")
    p = subprocess.Popen(launch_args(*opts, **flags), cwd=tmp_path, stderr=subprocess.PIPE,
                         text=True)
    lines = []
    for line in p.stderr:
        lines.append(line)
        if "A new study created" in line:
            break
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    err = "".join(lines) + p.stderr.read()
    assert p.wait(timeout=120) == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    tail = err.strip().splitlines()[-2:]
    assert tail[0].startswith("interrupted during search"), tail
    assert f"finished work is kept in {w}; run the same command again to resume" in tail[1]
    r = run_launch(*opts, **flags, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reusing cached features" in r.stderr and (w / "model.json").exists()


def test_a_mistyped_config_key_is_one_line_with_the_closest_keys(tmp_path):
    r = run_launch("--config.serch.trials=3", "--config.train.epoch=2",
                   "--config.train.finetune_epochs=0", config=QUICK, workdir=tmp_path / "w",
                   cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: config.serch.trials: no such key; did you mean search.trials")
    assert lines[1].startswith("error: config.train.epoch: no such key; did you mean train.epochs")
    assert lines[2] == "error: config.train.finetune_epochs: renamed to config.finetune.epochs"
    assert lines[3].startswith("hint: ") and len(lines) == 4
    assert not (tmp_path / "w").exists()  # before any work


def test_a_refused_config_file_argument_is_one_line(tmp_path):
    """configs/x.py:<arg> is parsed into typed options (config.parse_arg): a typo is refused,
    not silently the full config."""
    r = run_launch(config="configs/quickstart.py:quikc", workdir=tmp_path / "w", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "error: config file argument 'quikc': unknown option 'quikc'; known: quick"
    assert lines[1].startswith("hint: ") and len(lines) == 2
    assert not (tmp_path / "w").exists()


def test_the_console_shows_steps_and_the_log_file_keeps_the_rest(tmp_path):
    import os
    env = {k: v for k, v in os.environ.items() if k != "BT_JAX_LOG_TO_TERMINAL"}
    flags = {"config": QUICK, "workdir": tmp_path / "w", "cwd": tmp_path, "env": env,
             "timeout": 300}
    for _ in range(2):
        r = run_launch("--config.pipeline=prepare", **flags)
        assert r.returncode == 0, r.stderr[-2000:]
    info = [ln for ln in r.stderr.splitlines() if ln[:1] == "I" and ln[1:5].isdigit()]
    assert not info, info[:3]  # absl INFO stays off the terminal
    assert "finished: pipeline prepare (" in r.stderr
    log = (tmp_path / "w" / "logs" / "run.log").read_text()
    assert "pipeline prepare ->" in log and "manifest written" in log
    assert (tmp_path / "w" / "logs" / "run.1.log").exists()  # the first launch's, kept
    r = run_launch("--config.pipeline=prepare", "--verbosity=0", **flags)
    assert "manifest written" in r.stderr  # --verbosity brings INFO back
