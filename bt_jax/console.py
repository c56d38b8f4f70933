"""What a run shows on the terminal and what it keeps in its log file.

    log_file = console.setup(workdir, verbose=False)   # W/logs/run.log, the previous -> run.1.log

The terminal shows progress bars, one line per finished step (`finished: features
efficientnet_lite0 (95 s)`), warnings and errors. The full log (absl INFO and above,
Optuna's trial lines included) goes to `W/logs/run.log`; the last five launches' logs
are kept (run.1.log is the one before). `verbose=True` (launch.py's `--verbosity=0`, or
BT_JAX_LOG_TO_TERMINAL=1) brings INFO back to the terminal as well.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

KEEP = 5
_FORMAT = "%(levelname).1s%(asctime)s.%(msecs)03d %(filename)s:%(lineno)d] %(message)s"


def _rotate(log_dir: Path) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"run.{KEEP - 1}.log").unlink(missing_ok=True)
    for i in range(KEEP - 2, -1, -1):
        src = log_dir / ("run.log" if i == 0 else f"run.{i}.log")
        if src.exists():
            src.rename(log_dir / f"run.{i + 1}.log")
    return log_dir / "run.log"


def setup(workdir, *, verbose: bool) -> Path:
    import optuna
    from absl import logging as absl_logging
    path = _rotate(Path(workdir) / "logs")
    root = logging.getLogger()
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter(_FORMAT, "%m%d %H:%M:%S"))
    root.addHandler(to_file)
    optuna.logging.disable_default_handler()  # its lines go through the root logger
    optuna.logging.enable_propagation()
    if not verbose:
        absl_logging.get_absl_handler().setLevel(logging.WARNING)
        steps = logging.StreamHandler(sys.stderr)
        steps.setLevel(logging.INFO)
        steps.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("bt_jax.stages").addHandler(steps)
    return path
