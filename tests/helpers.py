"""Shared test helpers: launch.py run as a user runs it (and SIGKILLed mid-run), what a run
must produce whatever interrupted it, a free local port.

    r = launch(workdir, args)                                # waits; r.rc, r.log (stderr lines)
    launch(workdir, args, kill_at="trial 1 ").rc == -9       # SIGKILL right after a log line
    launch(workdir, args, kill_when=lambda: f.exists())      # ... once a condition holds
    outcome(workdir)                                         # metrics, trials, card, stages
    port = free_port()
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

ROOT = Path(__file__).resolve().parents[1]


class Launched(NamedTuple):
    rc: int            # -9 when killed
    log: list[str]     # stderr lines (INFO included: conftest sets BT_JAX_LOG_TO_TERMINAL)


def launch(workdir, args, kill_at: str | None = None, kill_when=None, timeout: float = 900,
           poll_s: float = 0.02) -> Launched:
    """Runs launch.py with `args` and --workdir. kill_at: SIGKILL right after a stderr line
    containing it (read as it comes); kill_when: SIGKILL once this callable returns True
    (polled every poll_s, e.g. a checkpoint file appearing). With either, fails the test if
    the run ends first; without, if it does not exit 0."""
    cmd = [sys.executable, str(ROOT / "launch.py"), *args, f"--workdir={workdir}"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
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
