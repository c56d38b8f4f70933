"""bt_jax.hugepages: when launch.py restarts itself with glibc's huge-page tunable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bt_jax import hugepages as H

ROOT = Path(__file__).resolve().parents[1]
GLIBC = ("glibc", "2.36")


@pytest.mark.parametrize("env, system, libc, thp, expected", [
    ({}, "Linux", GLIBC, "madvise", True),
    ({}, "Linux", GLIBC, "always", True),
    ({}, "Linux", GLIBC, "never", False),                       # the kernel refuses THP
    ({}, "Linux", GLIBC, "", False),                            # no THP interface
    ({}, "Linux", ("glibc", "2.31"), "madvise", False),         # tunable unknown before 2.35
    ({}, "Linux", ("glibc", "2.35"), "madvise", True),
    ({}, "Linux", ("", ""), "madvise", False),                  # musl
    ({}, "Darwin", ("", ""), "", False),
    ({"BT_JAX_HUGEPAGES": "0"}, "Linux", GLIBC, "madvise", False),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "Linux", GLIBC, "madvise", False),  # user's choice
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "Linux", GLIBC, "madvise", False),  # done: no loop
])
def test_wanted(env, system, libc, thp, expected):
    assert H.wanted(env, system, libc, thp) is expected


def test_other_tunables_are_kept():
    env = H.env_with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
                   "HOME": "/h"}
    assert H.env_with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert H.thp_mode(f) == "madvise"
    assert H.thp_mode(tmp_path / "missing") == ""


def _child(env):
    code = ("import os, sys; from bt_jax import hugepages; hugepages.reexec_if_needed(); "
            "print(os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")
    p = subprocess.Popen([sys.executable, "-c", code, "a", "b c"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    pid, tunables, args = out.split(" ", 2)
    return int(pid) == p.pid, tunables, args


def test_restart_keeps_pid_and_arguments_and_sets_the_tunable_once():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BT_JAX_HUGEPAGES")}
    if not H.wanted_here(env):
        pytest.skip("this machine has no glibc >= 2.35 with transparent huge pages")
    same_pid, tunables, args = _child(env)
    assert same_pid, "the restart must keep the pid (kill and resume find the run by it)"
    assert tunables == "glibc.malloc.hugetlb=1" and args.strip() == "['a', 'b c']"
    _, tunables, _ = _child({**env, "BT_JAX_HUGEPAGES": "0"})
    assert tunables == ""
