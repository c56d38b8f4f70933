"""XLA compilations: a persistent cache in the workdir, a count of what was compiled, and
the compiler options of our programs (one place).

    compilation.enable_cache(W / "cache" / "jax")   # a relaunch loads programs from disk
    BT_JAX_COMPILATION_CACHE=~/.cache/bt_jax/xla python launch.py ...   # one for all workdirs
    with compilation.Tally() as t:
        ...                                          # run a pipeline
    t.summary()   # {"programs": 41, "compiled": 3, "cache_hits": 38, "seconds": 9.2}
    jax.jit(forward, compiler_options=compilation.forward_compiler_options())

Compiling dominates short runs on a CPU (tens of seconds per backbone step), and every
relaunch (a resume, a second pipeline on the same workdir, predict after search) used to
compile the same programs again. JAX's persistent compilation cache stores each compiled
program keyed by its HLO, JAX version, flags and device, so a changed program is never
served stale. `Tally` listens to JAX's monitoring events, so the log and `timing.json` say
how much of a run went into compiling and how much the cache saved. (JAX reports a
program loaded from the cache as a compilation too, with the load time as its duration.)
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

SHARED_CACHE_ENV = "BT_JAX_COMPILATION_CACHE"   # a folder shared by every workdir
MIN_COMPILE_S = 0.5  # only programs this slow to compile are cached (the step, not tiny ops)
_COMPILE = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"

# XLA:CPU hands some convolutions and matmuls to YNNPACK by default, where VGG19's and
# ResNet50V2's forward passes and the head's few-row matmuls ran slower than with XLA's
# own kernels (`bench/bench_backbones.py --ynn on off`; figures in docs/benchmarks.md).
# Programs that only run the network forward, and the head program, opt out, per program
# and on CPU only; the fine-tune step keeps YNNPACK (Lite0's step is faster with it).
YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


def forward_compiler_options() -> dict | None:
    """`jax.jit(..., compiler_options=...)` for inference programs (and the head program)
    on the default backend: YNN_OFF on a CPU whose XLA knows the option, else None."""
    known = jax.default_backend() == "cpu" and xla_knows(tuple(YNN_OFF.items()))
    return dict(YNN_OFF) if known else None


@functools.cache
def xla_knows(options_items) -> bool:
    """Whether this XLA accepts these (experimental) options: a jax release that renamed or
    dropped them gets XLA's defaults instead of a failing compile."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options_items)).lower(
            jnp.float32(0)).compile()
        return True
    except Exception:   # noqa: BLE001  (XLA raises its own error types for unknown options)
        return False


def enable_cache(path) -> Path:
    """Compiled programs are stored in and loaded from `path` from now on (this process)."""
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    return path


def enable_for_run(config, workdir) -> Path | None:
    """The cache of one launch: `W/cache/jax`, or the folder named by BT_JAX_COMPILATION_CACHE
    (one cache for every workdir: a new workdir with the same model and shapes compiles
    nothing), none if `config.compilation_cache` is False. Call once, before the first
    compilation: JAX fixes the cache folder per process."""
    if not config.compilation_cache:
        return None
    shared = os.environ.get(SHARED_CACHE_ENV)
    return enable_cache(Path(shared) if shared else Path(workdir).absolute() / "cache" / "jax")


class Tally:
    """Counts backend compilations, their seconds and cache hits while active. JAX's
    listeners cannot be removed, so one listener per process feeds every active Tally."""

    _active: list[Tally] = []
    _lock = threading.Lock()
    _installed = False

    def __init__(self):
        self.compiles, self.compile_s, self.cache_hits, self.cache_misses = 0, 0.0, 0, 0

    @classmethod
    def _install(cls) -> None:
        if not cls._installed:
            jax.monitoring.register_event_duration_secs_listener(cls._on_duration)
            jax.monitoring.register_event_listener(cls._on_event)
            cls._installed = True

    @classmethod
    def _on_duration(cls, event: str, secs: float, **_) -> None:
        if event == _COMPILE:
            with cls._lock:
                for t in cls._active:
                    t.compiles += 1
                    t.compile_s += secs

    @classmethod
    def _on_event(cls, event: str, **_) -> None:
        if event in (_HIT, _MISS):
            with cls._lock:
                for t in cls._active:
                    if event == _HIT:
                        t.cache_hits += 1
                    else:
                        t.cache_misses += 1

    def __enter__(self) -> Tally:
        self._install()
        with self._lock:
            self._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._active.remove(self)

    def summary(self) -> dict:
        """programs: XLA programs obtained; compiled: those compiled here (not loaded from
        the cache); seconds: compiling + loading them."""
        return {"programs": self.compiles, "compiled": self.compiles - self.cache_hits,
                "cache_hits": self.cache_hits, "seconds": round(self.compile_s, 1)}


def release_freed_memory() -> bool:
    """Hands freed heap pages back to the OS (glibc's `malloc_trim`); False without glibc.
    Compiling a backbone's training step leaves ~0.8 GiB of freed compiler heap that glibc
    keeps mapped; the step's own temporaries (1.3 GiB for Lite0 at 224 px, batch 16) then
    come on top of it (the quickstart's peak RSS: docs/benchmarks.md, "End-to-end runs")."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


class CompileOnFirstCall:
    """A jitted function compiled ahead of its first call (for the shapes of that call),
    then the compiler's freed heap released before it runs: for big programs called many
    times with one shape, such as a training step."""

    def __init__(self, jitted):
        self.jitted, self.compiled = jitted, None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = self.jitted.lower(*args).compile()
            release_freed_memory()
        return self.compiled(*args)
