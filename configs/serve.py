"""Serve a trained model on a local web page and a JSON API (pipeline serve).

    python launch.py --config=configs/serve.py --config.checkpoint=runs/quickstart \
        --config.port=8000 --workdir=runs/serve
    # then open http://127.0.0.1:8000/ ; Ctrl-C stops it

Listens on 127.0.0.1 (serve.host; any other address warns: the page has no
authentication). POST /api/predict with a multipart field `file` answers JSON
(docs/serving.md). Prediction runs in batches of 1, compiled once at start: one upload
is one scan; --config.predict.batch_size=16 suits NIfTI volumes on a GPU.
"""

from bt_jax.config import base_config, parse_arg


def get_config(arg: str = ""):
    parse_arg(arg)  # no options: an argument is refused, not ignored
    c = base_config()
    c.name = "serve"
    c.pipeline = "serve"
    c.predict.batch_size = 1
    return c
