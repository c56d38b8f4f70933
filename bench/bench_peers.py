"""bt_jax beside the frameworks users know: Keras 3 (TensorFlow and JAX backends) and PyTorch + timm.

    python3 -m venv .venv-peers && .venv-peers/bin/pip install -e ".[peers]"   # bench only
    .venv-peers/bin/python bench/bench_peers.py           # 6 backbones x every task and framework
    .venv-peers/bin/python bench/bench_peers.py --backbones efficientnet_lite0 --batch 2 --size 64 \
        --rounds 1 --tasks forward --out /tmp/peers_smoke.jsonl      # a smoke test
    python bench/tables.py                                # docs/benchmarks.md's table from the results

TensorFlow, Keras, torch and timm are never runtime dependencies: the `peers` extra lives in
its own venv (where PyPI's torch wheel is the CUDA build, it runs on CPU all the same;
PyTorch's CPU index, where reachable, gives a smaller one). A framework that cannot be
imported is skipped, and its rows say why.

Tasks, every side with random weights, float32, the same batch, size and thread count:
- `forward`: batch `--batch` (32) at `--size` (224) px to the last feature map (include_top=False).
- `train`: one training step, the backbone's own classifier (include_top) with 2 classes,
  softmax cross-entropy, Adam over every layer, batch `--train-batch` (16) at `--size` px.
- `train_b`: VGG19 as method B trains it (configs/vgg19_staged.py): `--method-b-size` (240) px,
  Flatten -> Dense(1024, relu) -> Dropout(0.3) -> Dense(256, relu) -> Dense(2).
Sides, each in its own child process (KERAS_BACKEND is read at import; heavy imports must
not share a process), pinned to `--threads` cores and told that thread count:
- `bt_jax`: `bench_backbones.ours` / `train_step` as the library runs them: inference programs
  with `compilation.forward_compiler_options()` (YNNPACK off on CPU), the process on huge
  pages (`bt_jax/hugepages.py`, what launch.py sets, glibc tunables are read at start).
- `bt_jax-defaults`: the same programs with XLA's default compiler options, on glibc's
  default 4 KiB pages: what a plain `jax.jit` script gets; the difference is what bt_jax's
  settings buy (the depthwise and 1x1 implementations are model code and stay).
- `keras-tensorflow`: `keras.applications` (`keras_models.keras_model`); forward: each of
  `predict_on_batch`, a `tf.function` and a `tf.function(jit_compile=True)`; training:
  `train_on_batch` after `compile(Adam)`, at Keras' default jit_compile (no XLA on TF's CPU)
  and with jit_compile=True. TF intra- and inter-op threads = `--threads`.
- `keras-jax`: the previous baseline (`keras_models.keras_fns`: `predict_on_batch` and a
  jitted `stateless_call`); training: `train_on_batch` after `compile(Adam)`.
- `pytorch`: `timm.create_model(pretrained=False)`, channels_last, `torch.set_num_threads`;
  forward in eval mode under `torch.inference_mode()`, eager and `torch.compile`; training:
  a plain eager loop (zero_grad, cross-entropy, backward, Adam step) and `torch.compile`d.
Timing, for one backbone and task at a time: every side's child builds its variants (one
untimed first call each: tracing, compiling; its seconds are `setup_s`) and `--warmup`
untimed calls, then waits. The parent then runs `--rounds` rounds; in each, every variant of
every side in turn (the order rotated per round) makes `--round-warmup` untimed and then
`--repeats` timed calls while the other children sleep. So all sides see the same drift of
this shared machine, and a ratio is the median over rounds of the paired per-round ratios
(bench/tables.py), not a quotient of two numbers measured minutes apart. The untimed call
per round matters on VMs that hand freed memory back to the host (virtio free page
reporting, as on the development VM): XLA:CPU maps its temporary buffer afresh at every
call, and the first call after a pause re-faults it from the host at 2-3x a looped step's
time, while the peers' caching allocators keep theirs; a training loop has no such pause.
Images/s of a variant: from the median of all its timed calls. One JSON line per (backbone,
task, framework, variant) is appended to `--out` with the run's date and machine. Every
side of a backbone and task is resident at once: VGG19's training with all five sides needs
~20 GiB (name fewer `--frameworks` on a smaller machine); `--skip-variants` leaves out
variants by name (e.g. `conv3x3=xla`, the slowest side of VGG19's training steps).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from peer_sides import TIMM, setup_framework, variants_of  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnetb0", "mobilenet", "xception", "resnet50v2", "vgg19")
TASKS = ("forward", "train", "train_b")
WORKERS = ("bt_jax", "bt_jax-defaults", "keras-tensorflow", "keras-jax", "pytorch")
PREFIX = "PEERS_ROW "   # marks the children's result lines among the frameworks' own output
FORWARDED = ("batch", "train_batch", "size", "method_b_size", "warmup", "threads")
FRAMEWORK = {"bt_jax": "bt_jax", "bt_jax-defaults": "bt_jax", "keras-tensorflow": "keras-tensorflow",
             "keras-jax": "keras-jax", "pytorch": "pytorch"}
WHOLE = {"bt_jax": "shipped", "bt_jax-defaults": "xla-defaults"}   # a skipped child's variant


def shape_of(task: str, a) -> tuple[int, int]:
    """(batch, size) of a task."""
    return {"forward": (a.batch, a.size), "train": (a.train_batch, a.size),
            "train_b": (a.train_batch, a.method_b_size)}[task]


def base_row(kind: str, name: str, task: str, variant: str, a) -> dict:
    from keras_models import KERAS_REFERENCE
    batch, size = shape_of(task, a)
    ref = {"pytorch": f"timm {TIMM[name]}"}.get(kind, KERAS_REFERENCE[name] if "keras" in kind else "")
    ref += " + method B's Flatten head" if ref and task == "train_b" else ""
    return {"bench": "peers", "backbone": name, "task": task, "framework": FRAMEWORK[kind],
            "variant": WHOLE.get(kind, "-") if variant == "-" else variant, "batch": batch,
            "size": size, "dtype": "float32", "threads": a.threads, **({"reference": ref} if ref else {})}


def emit(row: dict) -> None:
    print(PREFIX + json.dumps(row), flush=True)


# ---- a child: one framework, one backbone and task, timed on the parent's command ----------

def build_variant(build, warmup: int):
    """(fn, fields): the variant built, its first call made (setup_s) and warmed up."""
    t = time.perf_counter()
    fn, settings = build()
    fn()   # first call: tracing and compiling where the framework does it lazily
    setup_s = time.perf_counter() - t
    for _ in range(warmup):
        fn()
    return fn, {"settings": settings, "setup_s": round(setup_s, 1), "warmup": warmup}


def chosen_variants(kind: str, name: str, task: str, a) -> list:
    """(variant, builder) of one side, less `--skip-variants`; nothing is built yet."""
    batch, size = shape_of(task, a)
    return [(v, b) for v, b in variants_of(kind, name, task, batch, size, not a.no_torch_compile)
            if v not in a.skip_variants]


def child(a) -> None:
    """Builds every variant of one side (a row each, "skipped" where it failed), says ready,
    then runs `{"variant": i, "warmup": w, "calls": n}` commands from stdin (w untimed calls,
    then n timed ones) until `{"quit": true}`."""
    cpus = sorted(os.sched_getaffinity(0))
    if a.threads < len(cpus):   # XLA and the others size their pools from the affinity
        os.sched_setaffinity(0, cpus[:a.threads])
    kind, name, task = a.worker, a.backbones[0], a.tasks[0]
    fns = []
    try:
        versions = setup_framework(kind, a.threads)
        variants = chosen_variants(kind, name, task, a)
    except Exception as e:   # not installed here, or no such model: the task says so
        emit({**base_row(kind, name, task, "-", a), "skipped": f"{type(e).__name__}: {e}"})
        variants = []
    for variant, build in variants:
        row = {**base_row(kind, name, task, variant, a), "versions": versions}
        try:
            fn, fields = build_variant(build, a.warmup)
            row.update(fields)
        except Exception as e:   # e.g. torch.compile without a working compiler
            fn, row["skipped"] = None, f"{type(e).__name__}: {str(e)[:300]}"
        fns.append(fn)
        emit(row)
    emit({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        for _ in range(cmd["warmup"]):
            fns[cmd["variant"]]()
        times = []
        for _ in range(cmd["calls"]):
            t = time.perf_counter()
            fns[cmd["variant"]]()
            times.append(time.perf_counter() - t)
        emit({"times": times})


# ---- the driver ------------------------------------------------------------------------------

def child_env(kind: str) -> dict:
    """The child's environment: Keras' backend; huge pages only for bt_jax as shipped (the
    peers and bt_jax-defaults at glibc's default pages); TF's info logging off."""
    from bt_jax import hugepages
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "GLIBC_TUNABLES")}
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
                if t and not t.startswith("glibc.malloc.hugetlb")]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    if kind == "bt_jax" and hugepages.wanted_here(env):   # BT_JAX_HUGEPAGES=0 is respected
        env = hugepages.env_with_tunable(env)
    env[hugepages.OFF_SWITCH] = "0"   # a child never re-executes itself
    if kind.startswith("keras-"):
        env["KERAS_BACKEND"] = kind.removeprefix("keras-")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class Side:
    """A running child: its built variants' rows, and timed calls on request."""

    def __init__(self, kind: str, name: str, task: str, a):
        self.kind, self.name, self.task, self.a = kind, name, task, a
        cmd = [a.python, str(Path(__file__).resolve()), "--worker", kind, "--backbones", name,
               "--tasks", task, *(["--no-torch-compile"] if a.no_torch_compile else []),
               *(["--skip-variants", *a.skip_variants] if a.skip_variants else [])]
        for opt in FORWARDED:
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(a, opt))]
        self.err = tempfile.TemporaryFile(mode="w+")   # a pipe left unread could fill and block
        self.proc = subprocess.Popen(cmd, env=child_env(kind), cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, bufsize=1)
        self.buffer, self.rows = "", []
        self.alive = True
        try:
            while not (row := self.read(a.child_timeout)).get("ready"):
                self.rows.append(row)
        except RuntimeError as e:
            self.fail(str(e))

    def read(self, timeout: float) -> dict:
        """The child's next result line (its other output is passed over)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while "\n" in self.buffer:
                line, self.buffer = self.buffer.split("\n", 1)
                if line.startswith(PREFIX):
                    return json.loads(line[len(PREFIX):])
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"timed out after {timeout:.0f} s")
            chunk = os.read(fd, 1 << 16).decode(errors="replace")
            if not chunk:
                raise RuntimeError(f"exited {self.proc.wait()}")
            self.buffer += chunk

    def fail(self, why: str) -> None:
        """Ends the child: each of its variants is a skipped row, for its own reason or this one."""
        self.proc.kill()
        self.proc.wait()
        self.err.seek(0)
        last = next((ln for ln in reversed(self.err.read().splitlines()) if ln.strip()), "")
        self.alive = False
        reason = f"child {why}: {last[:300]}"
        self.rows = ([{**r, "skipped": r.get("skipped", reason)} for r in self.rows]
                     or [{**base_row(self.kind, self.name, self.task, "-", self.a), "skipped": reason}])

    def timed(self, i: int, calls: int) -> list[float]:
        self.proc.stdin.write(json.dumps({"variant": i, "warmup": self.a.round_warmup,
                                          "calls": calls}) + "\n")
        self.proc.stdin.flush()
        return self.read(self.a.child_timeout)["times"]

    def close(self) -> None:
        if self.alive and self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        self.err.close()


def measure(name: str, task: str, a) -> list[dict]:
    """Every side of one backbone and task: built one after another, then timed in alternating
    rounds; a row per variant with its per-round medians (`round_s`)."""
    sides, times = [], {}
    try:
        for kind in a.frameworks:
            sides.append(Side(kind, name, task, a))
        units = [(s, i) for s in sides if s.alive for i, r in enumerate(s.rows) if "skipped" not in r]
        times = {(id(s), i): [] for s, i in units}
        for r in range(a.rounds):
            for s, i in units[r % len(units):] + units[:r % len(units)] if units else ():
                try:
                    if s.alive:
                        times[(id(s), i)].append(s.timed(i, a.repeats))
                except RuntimeError as e:
                    s.fail(str(e))
    finally:
        for s in sides:
            s.close()
    batch = shape_of(task, a)[0]
    for s in sides:
        for i, row in enumerate(s.rows):
            per_round = times.get((id(s), i))
            if not s.alive or not per_round:
                continue
            every = [t for ts in per_round for t in ts]
            sec = statistics.median(every)
            row.update({"images_per_s": round(batch / sec, 3), "batch_s_median": round(sec, 4),
                        "batch_s_all": [round(t, 4) for t in every], "rounds": a.rounds,
                        "repeats": a.repeats, "round_warmup": a.round_warmup,
                        "round_s": [round(statistics.median(ts), 4) for ts in per_round],
                        "loadavg": [round(v, 2) for v in os.getloadavg()]})
    return [r for s in sides for r in s.rows]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                   help="train_b (method B's head) runs for vgg19 only")
    p.add_argument("--frameworks", nargs="+", default=list(WORKERS), choices=WORKERS)
    p.add_argument("--batch", type=int, default=32, help="forward batch")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--method-b-size", type=int, default=240)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds over every side")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per variant and round")
    p.add_argument("--round-warmup", type=int, default=1,
                   help="untimed calls per variant and round, before its timed ones")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--no-torch-compile", action="store_true")
    p.add_argument("--skip-variants", nargs="*", default=[], metavar="VARIANT",
                   help="variants left out, e.g. conv3x3=xla (the slowest of VGG19's training sides)")
    peers_python = ROOT / ".venv-peers" / "bin" / "python"
    p.add_argument("--python", default=str(peers_python if peers_python.exists() else sys.executable),
                   help="interpreter of the children (default: .venv-peers' if present)")
    p.add_argument("--child-timeout", type=int, default=3600,
                   help="seconds for a child's build, and for each timed command")
    p.add_argument("--out", default=str(BENCH / "results" / "peers.jsonl"))
    p.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    a = parse(argv)
    if a.worker:
        child(a)
        return []
    from bench_backbones import machine_info
    import tables
    info = {**machine_info(), "threads": a.threads, "python": a.python}
    run, date = time.strftime("%Y-%m-%dT%H:%M:%S"), time.strftime("%Y-%m-%d")
    print(json.dumps({"bench": "machine", **info}), flush=True)
    rows = []
    for name in a.backbones:
        for task in [t for t in a.tasks if t != "train_b" or name == "vgg19"]:
            new = [{**r, "run": run, "date": date, "machine": info} for r in measure(name, task, a)]
            for r in new:
                print(json.dumps({k: v for k, v in r.items() if k not in ("machine", "batch_s_all")}),
                      flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
            rows += new
    print("\n" + tables.peers_markdown(rows))
    return rows


if __name__ == "__main__":
    main()
