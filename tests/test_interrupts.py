"""Ctrl-C ends a run even where a library swallows the KeyboardInterrupt (bt_jax/interrupts.py)."""

import signal
import subprocess
import sys
import time

from helpers import ROOT

# A process that swallows the first KeyboardInterrupt, as a library's `__del__` or callback
# can, and would then run on for a minute.
SWALLOWER = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from bt_jax import interrupts
interrupts.install(lambda: ["interrupted during features", "hint: run it again"], grace_s={{grace}})
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    pass
time.sleep(60)
print("ran through", flush=True)
"""


def _start(grace: float):
    p = subprocess.Popen([sys.executable, "-c", SWALLOWER.format(grace=grace)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_a_swallowed_ctrl_c_still_ends_the_run_after_the_grace():
    p = _start(grace=1.0)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "ran through" not in out
    assert err.strip().splitlines() == ["interrupted during features", "hint: run it again"]
    assert 0.9 <= time.monotonic() - t0 < 20


# JAX runs a callback on every garbage collection: a Ctrl-C landing there is printed by
# Python as "Exception ignored in ... Traceback" and swallowed (seen in CI).
IN_A_GC_CALLBACK = f"""
import gc, sys, time
sys.path.insert(0, {str(ROOT)!r})
from bt_jax import interrupts
interrupts.install(lambda: ["interrupted during search", "hint: run it again"], grace_s=50)
gc.callbacks.append(lambda *args: time.sleep(0.2))
print("ready", flush=True)
t0 = time.monotonic()
while time.monotonic() - t0 < 60:
    gc.collect()
print("ran through", flush=True)
"""


def test_a_ctrl_c_inside_a_gc_callback_ends_the_run_at_once_without_a_traceback():
    p = subprocess.Popen([sys.executable, "-c", IN_A_GC_CALLBACK], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "ran through" not in out and time.monotonic() - t0 < 10
    assert err.strip().splitlines() == ["interrupted during search", "hint: run it again"], err


def test_a_second_ctrl_c_ends_the_run_at_once():
    p = _start(grace=50.0)
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and time.monotonic() - t0 < 10
    assert err.strip().splitlines()[0] == "interrupted during features"


def test_exit_now_flushes_what_was_written_and_skips_teardown(tmp_path):
    log = tmp_path / "run.log"
    code = f"""
import atexit, logging, sys
sys.path.insert(0, {str(ROOT)!r})
from bt_jax import interrupts
logging.basicConfig(filename={str(log)!r}, level=logging.INFO)
logging.info("finished: features")
atexit.register(lambda: print("teardown ran"))
sys.stdout.write("partial line")
interrupts.exit_now(3, ["error: the disk is full", "hint: free some space"])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and r.stdout == "partial line"
    assert r.stderr.splitlines() == ["error: the disk is full", "hint: free some space"]
    assert "finished: features" in log.read_text()
