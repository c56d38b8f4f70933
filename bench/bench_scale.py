"""Method A at real sizes: wall time and peak memory (RSS) of each stage as N grows.

    python bench/bench_scale.py --n 1000,10000,100000 --root /tmp/scale     # phantoms
    python bench/bench_scale.py --n 0 --real ../shared/data/brain_mri_types --root /tmp/scale
    python bench/bench_scale.py --n 0 --train 1000,4000 --staged 300,1200   # training memory
    python bench/bench_scale.py --n 1000 --dry-run                          # the commands only
    python bench/bench_scale.py --n 100000 --keep-cache   # reuse W/cache: later stages only

Each data set runs as a user would: `launch.py --config=configs/quickstart.py` with 224 px
images, `pipeline=prepare` (discover, preprocess into the on-disk image store,
de-duplicate, split), then the frozen-only search (`finetune.epochs=0`, 2 trials:
features, k-fold head search, final head, CV estimates, report) in the same workdir, each
under `/usr/bin/time -v` (peak RSS of the largest process) while a sampler records the
peak sum over the process and its helpers (joblib's workers). Phantoms run with
`data.near_duplicate_bits=0`: they share one template, so their perceptual hashes collide
(not copies); `bench/bench_near_duplicates.py` times the near-duplicate search at 100k. Stage times come from the run's log
(the time between the lines each stage writes). One JSON line per data set goes to --out;
`bench/tables.py` turns them into the docs' table.

`--train N1,N2` / `--staged N1,N2`: peak RSS of the training loops at several sizes, to
show it does not grow with N: method A's `train` pipeline with one fine-tune epoch (Lite0,
224 px, batch 16), and method B's five stages (VGG19, random weights, 112 px, batch 32,
one epoch each, no augmented copies), both on phantoms.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_backbones import machine_info

ROOT = Path(__file__).resolve().parents[1]
# Log line (regex) that ends each stage; a stage runs from the previous one's end.
PREPARE_MARKS = [("preprocess", r"preprocessed \d+ distinct files"),
                 ("deduplicate", r"de-duplicated \d+ images"),
                 ("split+manifest", r"manifest written")]
SEARCH_MARKS = [("start+data", r"augmented copies"),
                ("features", r": computed \(\d+, \d+\) features|: reusing cached features"),
                ("search", r"search .* done: \d+ complete"),
                ("final+CV", r"writing metrics and reports"),
                ("report", r"^$")]  # to the end of the run


def _stamp(line: str) -> float | None:
    m = re.match(r"[IWE](\d{4}) (\d\d):(\d\d):(\d\d\.\d+)", line)
    if not m:
        return None
    h, mi, s = int(m[2]), int(m[3]), float(m[4])
    return h * 3600 + mi * 60 + s


def stage_times(log: str, marks, start: float, end: float) -> dict:
    """Seconds per stage: from the previous mark (or `start`) to the last line matching
    this stage's mark (absl timestamps; `start`/`end`: seconds since midnight)."""
    lines = [(t, ln) for ln in log.splitlines() if (t := _stamp(ln)) is not None]
    out, prev = {}, start
    for name, pattern in marks:
        hits = [t for t, ln in lines if pattern != r"^$" and re.search(pattern, ln)]
        t = hits[-1] if hits else (end if pattern == r"^$" else None)
        if t is None:
            continue
        out[name] = round(max(0.0, t - prev), 1)
        prev = t
    return out


def stage_lines(log: str) -> dict:
    """Seconds of the steps inside final+CV that print their own `finished:` line."""
    return {name: float(m[1]) for name in ("repeated CV",)
            if (m := re.search(rf"finished: {name} \((\d+) s\)", log))}


def timed(cmd: list[str], dry: bool) -> dict:
    """Runs `cmd` under /usr/bin/time -v: wall seconds, peak RSS (GiB), its log."""
    print("$", " ".join(cmd), flush=True)
    if dry:
        return {"wall_s": 0.0, "peak_rss_gib": 0.0, "peak_tree_rss_gib": 0.0, "log": "",
                "start": 0.0, "end": 0.0}
    now = datetime.datetime.now()
    start = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6
    t0 = time.perf_counter()
    env = {**os.environ, "BT_JAX_LOG_TO_TERMINAL": "1"}  # the stage marks are INFO lines
    p = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    tree = TreePeak(p.pid)
    tree.start()
    _, stderr = p.communicate()
    tree.stop.set()
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)[1])
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(rss / 2**20, 2),
            "peak_tree_rss_gib": round(tree.peak / 2**30, 2),
            "log": stderr, "start": start, "end": start + wall}


PAGE = os.sysconf("SC_PAGE_SIZE")


class TreePeak(threading.Thread):
    """The largest sum of RSS over a process and its descendants, sampled every 0.2 s.
    /usr/bin/time reports the largest single process; helper processes (joblib's workers
    of the logistic baseline) hold memory too, so the docs give both."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.stop = pid, 0, threading.Event()

    @staticmethod
    def _procs() -> dict[int, tuple[int, int]]:
        """pid -> (parent pid, RSS bytes) of every process now (Linux /proc)."""
        out = {}
        for d in Path("/proc").iterdir():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()  # from field 3
                out[int(d.name)] = (int(fields[1]), int(fields[21]) * PAGE)
            except (ValueError, OSError, IndexError):
                continue
        return out

    def run(self):
        while not self.stop.wait(0.2):
            procs, tree = self._procs(), {self.root}
            for _ in range(8):   # descendants, a few levels deep
                tree |= {p for p, (pp, _) in procs.items() if pp in tree}
            total = sum(procs[p][1] for p in tree if p in procs)
            self.peak = max(self.peak, total)


def fresh(workdir: Path, dry: bool, keep_cache: bool = False) -> None:
    """Everything but the phantoms goes, so every stage is timed from scratch
    (keep_cache: W/cache stays too, so the image store and features are reused)."""
    if dry or not workdir.exists():
        return
    for p in workdir.iterdir():
        if p.name != "synthetic_phantoms" and not (keep_cache and p.name == "cache"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_one(name: str, data_args: list[str], workdir: Path, dry: bool) -> dict:
    base = [sys.executable, "launch.py", "--config=configs/quickstart.py",
            f"--workdir={workdir}", "--config.preprocess.size=224", *data_args]
    prep = timed(base + ["--config.pipeline=prepare"], dry)
    search = timed(base + ["--config.finetune.epochs=0", "--config.search.trials=2"], dry)
    n_used = None
    if not dry:
        n_used = json.loads((workdir / "manifest.json").read_text())["summary"]["used"]
    return {"bench": "scale", "data": name, "n_used": n_used,
            "prepare": {"wall_s": prep["wall_s"], "peak_rss_gib": prep["peak_rss_gib"],
                        "peak_tree_rss_gib": prep["peak_tree_rss_gib"],
                        "stages": stage_times(prep["log"], PREPARE_MARKS, prep["start"],
                                              prep["end"])},
            "frozen_only_search": {"wall_s": search["wall_s"],
                                   "peak_rss_gib": search["peak_rss_gib"],
                                   "peak_tree_rss_gib": search["peak_tree_rss_gib"],
                                   "stages": {**stage_times(search["log"], SEARCH_MARKS,
                                                            search["start"], search["end"]),
                                              **stage_lines(search["log"])}}}


STAGES_1_EPOCH = ",".join(f"'{s}'" for s in (   # a tuple of strings on the command line
    "baseline:none:1:3e-4", "stage1:block5_conv3+block5_conv4:1:1e-4", "stage2:block5:1:5e-5",
    "stage3:block4+block5:1:2e-5", "final:all:1:1e-5"))


DEFAULT_BATCH = {"method_a_finetune": 16, "method_b_stages": 32}


def run_training(kind: str, n: int, root: Path, dry: bool, staged_batch: int = 32) -> dict:
    """Peak RSS (and wall time) of method A with fine-tuning, or of method B, on n phantoms."""
    batch = DEFAULT_BATCH[kind] if kind == "method_a_finetune" else staged_batch
    w = root / f"{kind}_{n}_{batch}"
    fresh(w, dry)
    phantoms = [f"--config.data.phantoms.n_per_class={n // 2}", "--config.data.dir=",
                "--config.data.near_duplicate_bits=0"]
    if kind == "method_a_finetune":
        cmd = ["--config=configs/quickstart.py", "--config.pipeline=train",
               "--config.finetune.epochs=1", f"--config.finetune.batch_size={batch}",
               "--config.preprocess.size=224"]
    else:
        cmd = ["--config=configs/vgg19_staged.py", "--config.preprocess.size=112",
               "--config.weights.random_init=True", f"--config.staged.batch_size={batch}",
               "--config.augment.balance=none", f"--config.staged.stages={STAGES_1_EPOCH}"]
    r = timed([sys.executable, "launch.py", *cmd, f"--workdir={w}", *phantoms], dry)
    used = None if dry else json.loads((w / "manifest.json").read_text())["summary"]["used"]
    # the batch in the key only where it is not the default (earlier lines keep their key)
    label = f"{kind} phantoms {n}" + ("" if batch == DEFAULT_BATCH[kind] else f" batch {batch}")
    return {"bench": "scale_train", "data": label, "kind": kind, "batch": batch, "n_used": used,
            "wall_s": r["wall_s"], "peak_rss_gib": r["peak_rss_gib"],
            "peak_tree_rss_gib": r["peak_tree_rss_gib"]}


def write_phantoms(n: int, workdir: Path, dry: bool) -> float:
    """The synthetic scans, written before timing (not part of a user's run); a folder
    already holding n of them (same seed, so the same scans) is reused."""
    folder = workdir / "synthetic_phantoms"
    if not dry and folder.is_dir() and sum(
            len(os.listdir(d)) for d in folder.iterdir() if d.is_dir()) == n:
        print(f"$ phantoms: {n} scans already in {folder}", flush=True)
        return 0.0
    code = ("from pathlib import Path; from bt_jax.data import phantoms; "
            f"phantoms.write_phantoms(Path({str(workdir / 'synthetic_phantoms')!r}), "
            f"n_per_class={n // 2}, size=256, seed=0)")
    t0 = time.perf_counter()
    print(f"$ phantoms: {n} scans", flush=True)
    if not dry:
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1000,10000", help="phantom counts (0: none)")
    ap.add_argument("--real", default="", help="a real class-folder data set to add")
    ap.add_argument("--train", default="", help="phantom counts: method A with fine-tuning")
    ap.add_argument("--staged", default="", help="phantom counts: method B's stages")
    ap.add_argument("--staged-batch", type=int, default=DEFAULT_BATCH["method_b_stages"],
                    help="method B's batch size")
    ap.add_argument("--root", default="/tmp/bt_jax_scale", help="workdirs go here")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.jsonl"))
    ap.add_argument("--keep-cache", action="store_true",
                    help="reuse W/cache (image store, features) of an earlier run: measures "
                         "the later stages' memory and time without redoing the first ones")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    runs = [(f"phantoms {n}", n) for n in map(int, a.n.split(",")) if n]
    if a.real:
        runs.append((Path(a.real).name, 0))
    info = machine_info()
    for name, n in runs:
        workdir = Path(a.root) / name.replace(" ", "_")
        if n:
            # Phantoms share one template: their perceptual hashes collide by the hundred
            # thousand (not copies), which prepare refuses; exact duplicates only.
            data_args = [f"--config.data.phantoms.n_per_class={n // 2}",
                         "--config.data.near_duplicate_bits=0"]
            phantom_s = write_phantoms(n, workdir, a.dry_run)
        else:
            data_args = [f"--config.data.dir={Path(a.real).resolve()}", "--config.data.classes=()",
                         "--config.data.positive=", "--config.data.negative_classes=notumor"]
            phantom_s = None
        fresh(workdir, a.dry_run, a.keep_cache)
        rec = run_one(name, data_args, workdir, a.dry_run)
        rec.update(phantoms_written_s=phantom_s, date=datetime.date.today().isoformat(),
                   machine=info, cache_reused=a.keep_cache)
        _emit(rec, a)
    for kind, counts in (("method_a_finetune", a.train), ("method_b_stages", a.staged)):
        for n in [int(x) for x in counts.split(",") if x]:
            rec = run_training(kind, n, Path(a.root), a.dry_run, a.staged_batch)
            rec.update(date=datetime.date.today().isoformat(), machine=info)
            _emit(rec, a, name="scale_train")


def _emit(rec: dict, a, name: str = "scale") -> None:
    print(json.dumps(rec), flush=True)
    if not a.dry_run:
        out = Path(a.out).with_name(f"{name}.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
