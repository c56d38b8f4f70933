"""bt_jax entry point: parse --config and --workdir, then run one pipeline.

    python launch.py --config=configs/quickstart.py --workdir=runs/quick
    python launch.py --config=configs/resnet_search.py --config.data.dir=../shared/data/brain_mri \
        --workdir=runs/resnet

A mistake in a setting, a file or a folder prints one line (`error: ...`) and exits with
status 2; a problem of the machine (disk full, out of memory, an unwritable workdir) exits
with 3; Ctrl-C prints where it stopped and exits with 130 (errors.one_line), even where a
library swallows the interrupt (bt_jax/interrupts.py). `--verbose`
(or BT_JAX_VERBOSE=1) shows the traceback too. Bugs keep theirs.
"""

import logging
import os
import sys
from pathlib import Path

from bt_jax import hugepages

hugepages.reexec_if_needed()   # before JAX loads: XLA's buffers on huge pages (bt_jax/hugepages.py)

import jax
from absl import app, flags
from ml_collections import config_flags

from bt_jax import compilation, console, errors, interrupts, io, pipelines, sharding, stages
from bt_jax.config import overrides

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for every output, cache and checkpoint.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks of user errors too.")
flags.mark_flags_as_required(["config", "workdir"])
_HINT = ("fix the setting, file or folder named above and run the same command again; "
         "finished work in the workdir is reused")


class _QuietOrbax(logging.Filter):
    """Orbax logs every checkpoint save at INFO; keep its warnings, drop the chatter."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").addFilter(_QuietOrbax())
    if sharding.initialize(_CONFIG.value.distributed) and not io.is_writer():
        logging.getLogger().setLevel(logging.WARNING)  # process 0 tells the story once
    interrupts.install(_interrupted)
    try:
        pipelines.usable_workdir(Path(_WORKDIR.value).absolute())
        if io.is_writer():  # the terminal: progress, finished steps, warnings; the rest in W/logs
            console.setup(_WORKDIR.value, verbose=flags.FLAGS["verbosity"].present
                          or bool(os.environ.get("BT_JAX_LOG_TO_TERMINAL")))
        # Here, not in pipelines.run: JAX fixes the cache folder for the whole process.
        compilation.enable_for_run(_CONFIG.value, _WORKDIR.value)
        logging.info("JAX %s on %s", jax.__version__, jax.devices())
        pipelines.run(_CONFIG.value, _WORKDIR.value)
    except BaseException as e:  # noqa: BLE001 - sorted by errors.one_line; bugs re-raised
        out = errors.one_line(e, stage=stages.current(), workdir=_WORKDIR.value)
        if out is None or _VERBOSE.value or os.environ.get("BT_JAX_VERBOSE"):
            raise
        interrupts.exit_now(out[2], _lines(*out))  # XLA's threads may still run: no teardown


def _lines(message: str, hint: str, status: int) -> list[str]:
    """`error: ...` + `hint: ...`; Ctrl-C: where it stopped (a stopped server: that alone)."""
    lines = [f"error: {message}" if status != 130 else message]
    if hint or status != 130:
        lines.append(f"hint: {hint or _HINT}"
                     + (" (--verbose shows the traceback)" if status == 2 else ""))
    return lines


def _interrupted() -> list[str]:
    return _lines(*errors.one_line(KeyboardInterrupt(), stage=stages.current(),
                                   workdir=_WORKDIR.value))


def _parse_flags(argv):
    """absl's parse, with a mistyped config key (closest keys named) or a config file's
    refused argument as one line, exit 2."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.IllegalFlagValueError) as e:
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        bad = overrides.refused_argument(e) or overrides.unknown_keys(
            overrides.load_file(spec), [a for a in argv if a.startswith("--config.")])
        if not bad:
            raise
        for line in bad:
            print(f"error: {line}", file=sys.stderr)
        print("hint: every key and its default: docs/configuration.md", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
