"""Pipelines: short scripts of library calls, one per `config.pipeline`.

    from bt_jax import pipelines
    pipelines.run(config, workdir)   # validates, saves config.json, dispatches

Each pipeline module has `run(config, workdir)`; `PIPELINES` below is the whole table, and
nothing else lives here: method A's steps are in bt_jax/method_a/, serve's web app in
bt_jax/serving/, the reports every training run writes in bt_jax/inference/run_reports.py.
"""

from __future__ import annotations

import logging
import time
import os
from pathlib import Path

from bt_jax import compilation, io, stages
from bt_jax.errors import EnvironmentProblem
from bt_jax import config as config_lib
from bt_jax.pipelines import evaluate, export, predict, prepare, search, serve, staged, train

PIPELINES = {
    "prepare": prepare.run,    # data set, de-duplication, manifest, splits
    "search": search.run,      # method A: features, Optuna head search, fine-tune, test
    "train": train.run,        # method A with one given head setting (no search)
    "staged": staged.run,      # method B: staged unfreezing
    "predict": predict.run,    # a trained model on new scans
    "evaluate": evaluate.run,  # a trained model on another labelled folder
    "serve": serve.run,        # a trained model on a local web page + JSON API
    "export": export.run,      # a trained model as one jax.export program (jax alone runs it)
}


def run(config, workdir: str | Path):
    config_lib.validate(config_lib.normalise(config))
    workdir = Path(workdir).absolute()  # report links and model.json paths are made relative to it
    usable_workdir(workdir)
    io.write_json(workdir / "config.json", config.to_dict(), default=str)
    logging.info("pipeline %s -> %s", config.pipeline, workdir)
    start = time.perf_counter()
    with compilation.Tally() as tally, stages.stage(f"pipeline {config.pipeline}"):
        out = PIPELINES[config.pipeline](config, workdir)
    timing = {"pipeline": config.pipeline, "wall_s": round(time.perf_counter() - start, 1),
              **tally.summary()}
    logging.info("%s done in %.0f s; XLA: %d programs compiled, %d loaded from the compilation "
                 "cache, %.0f s in all", config.pipeline, timing["wall_s"], timing["compiled"],
                 timing["cache_hits"], timing["seconds"])
    io.write_json(workdir / "timing.json", timing)
    return out


def usable_workdir(workdir: Path) -> None:
    """Creates the workdir, or one line (exit 3) saying why it cannot be used."""
    if workdir.exists() and not workdir.is_dir():
        raise EnvironmentProblem(f"--workdir={workdir} is a file, not a folder; name a folder "
                                 "(it is created if missing)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        # One probe per process: processes of a multi-host job share the workdir.
        probe = workdir / f".bt_jax_write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise EnvironmentProblem(f"--workdir={workdir} cannot be written "
                                 f"({e.strerror or e}); name a folder you can write to") from e
