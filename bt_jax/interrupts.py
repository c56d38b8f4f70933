"""Ctrl-C that always ends a run: one line, exit status 130, finished work kept.

    interrupts.install(lambda: ["interrupted during search", "hint: ..."])   # launch.py
    interrupts.exit_now(130, lines)      # print, flush the logs, end without teardown

Python turns SIGINT into a KeyboardInterrupt in the main thread, and most of the time
that is enough: the run unwinds, records what it can (an Optuna trial is told FAIL) and
launch.py prints its line. Two things break that: a library can swallow the exception (it
surfaces in a `__del__` or a callback that ignores errors: seen as a Ctrl-C the run simply
ran through), and XLA's own threads can crash the interpreter's shutdown after it (seen:
exit status -11 after the message). So the first Ctrl-C raises KeyboardInterrupt as usual
and starts a deadline; a run still alive `grace_s` later, or a second Ctrl-C, ends at once
with the same line. An interrupt that lands in a `__del__` or a gc callback (JAX registers
one) reaches `sys.unraisablehook`, which would print it as "Exception ignored ... Traceback"
and run on: there the run ends at once, with the line and no traceback. Ending is
`os._exit`, as after a kill, which every write is built to survive (atomic renames; the
relaunch resumes).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Callable

GRACE_S = 10.0
_ONE_EXIT = threading.RLock()   # main thread and deadline: the first one prints


def exit_now(status: int, lines: list[str]) -> None:
    """Prints `lines` on stderr, flushes every log handler and stream, ends the process."""
    with _ONE_EXIT:
        for line in lines:
            print(line, file=sys.stderr)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(status)


def install(lines: Callable[[], list[str]], grace_s: float = GRACE_S) -> None:
    """SIGINT raises KeyboardInterrupt once; `lines()` is printed by whoever ends the run."""
    started: list[threading.Timer] = []

    def deadline():
        exit_now(130, lines())

    def on_sigint(signum, frame):
        if started:  # the second Ctrl-C: the user does not want to wait
            deadline()
        timer = threading.Timer(grace_s, deadline)
        timer.daemon = True
        timer.start()
        started.append(timer)
        raise KeyboardInterrupt

    default_hook = sys.unraisablehook

    def on_unraisable(unraisable):
        if started and isinstance(unraisable.exc_value, KeyboardInterrupt):
            deadline()  # swallowed where nobody can catch it: end now, as the deadline would
        default_hook(unraisable)

    sys.unraisablehook = on_unraisable
    signal.signal(signal.SIGINT, on_sigint)
