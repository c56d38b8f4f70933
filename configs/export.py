"""Export a trained model as one portable program (pipeline export).

    python launch.py --config=configs/export.py --config.checkpoint=runs/quickstart \
        --workdir=runs/export [--config.export.platforms=cpu]

Writes workdir/model.jaxexport (jax.export: preprocessed images (N, S, S, 3) in [0, 1] ->
class probabilities (N, C)) and workdir/model.json (classes, threshold, preprocessing,
temperature, digest). docs/serving.md shows a loader that needs only jax, numpy and opencv.
"""

from bt_jax.config import base_config, parse_arg


def get_config(arg: str = ""):
    parse_arg(arg)  # no options: an argument is refused, not ignored
    c = base_config()
    c.name = "export"
    c.pipeline = "export"
    return c
