"""bt_jax entry point: parse --config and --workdir, then run one pipeline.

    python launch.py --config=configs/quickstart.py --workdir=runs/quick
    python launch.py --config=configs/resnet_search.py --config.data.dir=../shared/data/brain_mri \
        --workdir=runs/resnet
"""

import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from bt_jax import pipelines

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for every output, cache and checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(logging.Filter):
    """Orbax logs every checkpoint save at INFO; keep its warnings, drop the chatter."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").addFilter(_QuietOrbax())
    logging.info("JAX %s on %s", jax.__version__, jax.devices())
    pipelines.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
