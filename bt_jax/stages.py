"""Which step of a pipeline is running, so an interruption can say where it stopped.

    with stages.stage("features"):
        ...                              # stages nest: "search" inside "method A"
    stages.current()                     # the innermost running (or interrupted) step

A step that ends by an exception stays the answer of `current()` until the next one
starts, so `launch.py` can print `interrupted during features; ...` after the exception
has unwound the stack.
"""

from __future__ import annotations

import contextlib
import logging
import time

_STACK: list[str] = []
_STOPPED: list[str] = []   # the innermost step an exception left
log = logging.getLogger(__name__)


@contextlib.contextmanager
def stage(name: str):
    _STACK.append(name)
    _STOPPED.clear()
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        if not _STOPPED:
            _STOPPED.append(name)
        raise
    finally:
        _STACK.pop()
    log.info("finished: %s (%.0f s)", name, time.perf_counter() - start)


def current() -> str:
    return (_STOPPED or _STACK or ["start-up"])[-1]
