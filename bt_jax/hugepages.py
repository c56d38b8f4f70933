"""XLA:CPU's buffers on transparent huge pages: one page fault per 2 MiB instead of 4 KiB.

    from bt_jax import hugepages
    hugepages.reexec_if_needed()   # first thing in launch.py, before jax is imported

XLA:CPU allocates a program's buffers with malloc at every call, and glibc serves blocks
over 32 MiB with freshly mapped memory, so every call faults its whole working set in
again, 4 KiB at a time: an EfficientNet-Lite0 forward at batch 32 took ~76,000 page
faults (312 MB) per call, with a quarter of its CPU time in the kernel
(docs/benchmarks.md, "Huge pages"). glibc >= 2.35 has a tunable, `glibc.malloc.hugetlb=1`, that
madvises malloc's memory for transparent huge pages; glibc reads it only at process start,
so `launch.py` re-executes itself once with it set (Linux with glibc >= 2.35 and
transparent huge pages not "never"). `BT_JAX_HUGEPAGES=0` turns this off. Scripts that
import bt_jax get the same by starting Python with GLIBC_TUNABLES=glibc.malloc.hugetlb=1.
No heavy imports here: this runs before JAX is loaded.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OFF_SWITCH = "BT_JAX_HUGEPAGES"
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_ENABLED) -> str:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), "" if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def wanted(env, system: str, libc: tuple[str, str], thp: str) -> bool:
    """Whether to restart with TUNABLE: not already set nor switched off, and glibc >= 2.35
    on Linux with transparent huge pages available (elsewhere the tunable does nothing)."""
    if env.get(OFF_SWITCH, "1") == "0" or "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", ""):
        return False
    name, version = libc
    try:
        new_enough = tuple(int(p) for p in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        new_enough = False
    return system == "Linux" and name == "glibc" and new_enough and thp in ("always", "madvise")


def env_with_tunable(env) -> dict:
    """env plus TUNABLE (appended to any other glibc tunables already set)."""
    tunables = ":".join(filter(None, (env.get("GLIBC_TUNABLES", ""), TUNABLE)))
    return {**env, "GLIBC_TUNABLES": tunables}


def wanted_here(env=None) -> bool:
    """`wanted` for this machine and env (default: this process's environment)."""
    env = os.environ if env is None else env
    return wanted(env, platform.system(), platform.libc_ver(), thp_mode())


def reexec_if_needed() -> None:
    """Replaces this process (same pid, arguments and interpreter flags) by one started
    with TUNABLE, when `wanted_here`; returns otherwise."""
    if wanted_here():
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env_with_tunable(os.environ))
