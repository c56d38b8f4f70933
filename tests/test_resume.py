"""Kill-anywhere resume: a run SIGKILLed at any point and relaunched with the same workdir
ends exactly as an uninterrupted run of the same seed (metrics, trials, model card)."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK_SEARCH

ROOT = Path(__file__).resolve().parents[1]
SEARCH = [f"--config={ROOT}/{QUICK_SEARCH[0]}", *QUICK_SEARCH[1:]]
STAGED = [f"--config={ROOT}/configs/vgg19_staged.py:quick"]

# (log line that marks the point, what is running when the kill lands)
SEARCH_POINTS = {
    "preprocess": "pipeline search ->",                 # weights, discovery, preprocessing
    "features": "augmented copies:",                     # copies and feature extraction
    "search": "trial 1 ",                               # between/during trials
    "finetune": "fine-tune: starting point",            # inside the fine-tuning epoch
    "reports": "writing metrics and reports",           # while reports are written
}


def launch(workdir, args, kill_at: str | None = None) -> int:
    """Runs launch.py; with kill_at, SIGKILLs it right after a log line containing kill_at
    (returns -9). Fails the test if that line never appears."""
    cmd = [sys.executable, str(ROOT / "launch.py"), *args, f"--workdir={workdir}"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = []
    for line in p.stderr:
        log.append(line)
        if kill_at and kill_at in line:
            p.send_signal(signal.SIGKILL)
            p.wait()
            return -9
    rc = p.wait(timeout=900)
    assert kill_at is None, f"never saw {kill_at!r}; log tail:\n{''.join(log[-20:])}"
    assert rc == 0, "".join(log[-40:])
    return rc


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


@pytest.fixture
def reference(quick_search_run):
    """The uninterrupted run (conftest: shared with test_search_pipeline)."""
    return outcome(quick_search_run[0])


def _killed_then_resumed(tmp_path, args, point):
    assert launch(tmp_path, args, kill_at=point) == -9
    launch(tmp_path, args)
    return outcome(tmp_path)


@pytest.mark.e2e
def test_search_killed_during_a_trial_resumes_to_the_same_result(reference, tmp_path):
    got = _killed_then_resumed(tmp_path, SEARCH, SEARCH_POINTS["search"])
    assert got == reference


@pytest.mark.slow
@pytest.mark.parametrize("point", ["preprocess", "features", "finetune", "reports"])
def test_search_killed_anywhere_resumes_to_the_same_result(reference, tmp_path, point):
    assert _killed_then_resumed(tmp_path, SEARCH, SEARCH_POINTS[point]) == reference


@pytest.mark.slow
def test_staged_killed_across_a_stage_boundary_resumes_to_the_same_result(tmp_path):
    launch(tmp_path / "a", STAGED)
    # killed inside stage1, after the baseline stage finished
    got = _killed_then_resumed(tmp_path / "b", STAGED, "stage1: starting point")
    assert got == outcome(tmp_path / "a")
