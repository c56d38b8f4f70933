"""Pipeline `export`: a trained model as a portable program, runnable with jax alone.

    python launch.py --config=configs/export.py --config.checkpoint=runs/quickstart \
        --workdir=runs/export

Writes E/model.jaxexport (jax.export's serialized program: preprocessed images (N, S, S, 3)
in [0, 1] -> class probabilities (N, C), temperature included) and E/model.json (classes,
threshold, preprocessing, temperature, digest, the model card); bt_jax/inference/export.py
says how. config.export.platforms (default cpu and cuda) are the lowering targets: with an
accelerator among them the program is traced without CPU-only fast paths.
"""

from __future__ import annotations

from pathlib import Path

from bt_jax.inference import export as exporting
from bt_jax.inference.loading import load_for


def run(config, workdir: Path):
    platforms = tuple(config.export.platforms)
    accelerated = any(p != "cpu" for p in platforms)
    depthwise = "conv" if accelerated and config.model.depthwise == "auto" else None
    model = load_for(config, depthwise=depthwise)
    conv3x3 = "xla" if accelerated and config.model.conv3x3 == "auto" else config.model.conv3x3
    card = exporting.write_export(model, workdir, platforms,
                                  pointwise="conv" if accelerated else "auto", conv3x3=conv3x3)
    print(f"exported {model.model_id} for {', '.join(card['platforms'])}: "
          f"{Path(workdir) / exporting.PROGRAM} and {Path(workdir) / exporting.CARD}")
    return card
