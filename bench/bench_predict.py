"""Prediction on a folder of scans (images/s of the whole `predict` path), per depthwise impl.

    python bench/bench_predict.py                        # 1,000 scans: now vs the issue's path
    python bench/bench_predict.py --files 300 --runs shift:16   # quicker, today's default only

What is timed is what `python launch.py --config=configs/predict.py` does for a folder:
`inference.load_model` (model.json + orbax checkpoint), then `inference.predict_files`
(threaded read + brain crop + equalise + resize of the next chunk while the jitted
EfficientNet-Lite0 classifier runs on this one in fixed batches at 224 px, the progress
bar on stderr), compile included.
The model is EfficientNet-Lite0 + a 128-unit head with random weights (speed does not
depend on the values); the scans are the reference set's files (../shared/data/brain_mri)
copied under new names until there are `--files` of them, or synthetic phantoms when the
set is absent. Each run is `depthwise:batch`: "conv:32" is the path the issue measured
(grouped convolutions, batch 32); "shift:16" is the CPU default now (shifted
multiply-adds, `predict.batch_size=16`); "shift:32" separates the two changes. All runs
are in one process on the same files, one after the other. An optional third part picks
how 1x1 convolutions run (models/common.Conv): "conv:32:conv" is the issue's path exactly,
"shift:16:conv" last session's default (before 1x1 convolutions became matmuls on CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bt_jax import inference  # noqa: E402
from bt_jax.data import phantoms  # noqa: E402
from bt_jax.models import registry as mreg  # noqa: E402
from bt_jax.models.heads import Classifier, Head  # noqa: E402
from bt_jax.train.checkpoint import Checkpoints  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "data" / "brain_mri"
SIZE = 224


def write_model(root: Path, backbone: str, units: int) -> Path:
    """A trained-model workdir as the pipelines leave it (model.json + best checkpoint)."""
    module = Classifier(backbone=mreg.get(backbone).make(), head=Head(units, 0.0))
    variables = jax.jit(lambda r: module.init(r, jnp.zeros((1, SIZE, SIZE, 3)), train=False))(
        jax.random.PRNGKey(0))
    Checkpoints(root / "checkpoints" / "finetune").save_best(0, jax.device_get(dict(variables)), 0.5)
    card = {"format": 1, "bt_jax": "bench", "backbone": backbone, "weights_digest": "random-init",
            "dtype": "float32", "head": {"type": "gap_dense", "units": units, "dropout": 0.0},
            "preprocess": {"crop": True, "crop_threshold": 45, "crop_margin": 0.02,
                           "equalize": "hist", "clahe_clip": 2.0, "clahe_tiles": 8, "size": SIZE},
            "classes": ["no", "yes"], "positive": "yes", "threshold": 0.5,
            "checkpoint": "checkpoints/finetune/best", "synthetic": True}
    (root / "model.json").write_text(json.dumps(card, indent=1))
    return root


def write_scans(folder: Path, n: int) -> str:
    """n scan files in `folder`; returns where they came from."""
    folder.mkdir(parents=True)
    sources = sorted(p for p in REFERENCE.rglob("*") if p.is_file()
                     and p.suffix.lower() in (".jpg", ".jpeg", ".png")) if REFERENCE.is_dir() else []
    if sources:
        for i in range(n):
            src = sources[i % len(sources)]
            shutil.copyfile(src, folder / f"scan_{i:04d}{src.suffix.lower()}")
        return f"reference set ({len(sources)} files, cycled)"
    phantoms.write_phantoms(folder, n_per_class=(n + 1) // 2, size=256, seed=0)
    return "synthetic phantoms (reference set absent)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--runs", nargs="+",
                    default=["shift:16", "shift:16:conv", "shift:32", "conv:32:conv"],
                    help="depthwise impl (auto|shift|conv) : batch size [: pointwise impl "
                         "(auto|dot|conv), default auto]")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = write_model(tmp / "model", args.backbone, 128)
        origin = write_scans(tmp / "scans", args.files)
        files = inference.find_inputs(str(tmp / "scans"))
        print(f"# {len(files)} scans from the {origin}; {args.backbone} at {SIZE} px")
        results = {}
        for run in args.runs:
            impl, batch, pw = (run.split(":") + ["auto"])[:3]
            t0 = time.perf_counter()
            model = inference.load_model(model_dir, depthwise=impl, pointwise=pw)
            t_load = time.perf_counter() - t0
            rows = inference.predict_files(model, files, batch_size=int(batch))
            wall = time.perf_counter() - t0
            ok = sum(r["status"] == "ok" for r in rows)
            results[run] = len(rows) / wall
            print(f"{run:9s} {len(rows)} scans ({ok} ok) in {wall:6.1f} s (load {t_load:.1f} s): "
                  f"{results[run]:6.1f} images/s", flush=True)
        base = args.runs[-1]
        for run, v in results.items():
            if run != base:
                print(f"{run} / {base}: {v / results[base]:.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    from bt_jax import hugepages
    hugepages.reexec_if_needed()   # as launch.py runs (BT_JAX_HUGEPAGES=0: without)
    main()
