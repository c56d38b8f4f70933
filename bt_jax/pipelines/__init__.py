"""Pipelines: short scripts of library calls, one per `config.pipeline`.

    from bt_jax import pipelines
    pipelines.run(config, workdir)   # validates, saves config.json, dispatches

Each pipeline module has `run(config, workdir)`; `PIPELINES` below is the whole table.
Helper modules (steps shared by pipelines, not pipelines themselves): method_a.py
(method A's steps), ensemble.py (top-k trials), outputs.py (reports of a training run).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from bt_jax import compilation, io
from bt_jax import config as config_lib
from bt_jax.pipelines import evaluate, predict, prepare, search, staged, train

PIPELINES = {
    "prepare": prepare.run,    # data set, de-duplication, manifest, splits
    "search": search.run,      # method A: features, Optuna head search, fine-tune, test
    "train": train.run,        # method A with one given head setting (no search)
    "staged": staged.run,      # method B: staged unfreezing
    "predict": predict.run,    # a trained model on new scans
    "evaluate": evaluate.run,  # a trained model on another labelled folder
}


def run(config, workdir: str | Path):
    config_lib.validate(config_lib.normalise(config))
    workdir = Path(workdir).absolute()  # report links and model.json paths are made relative to it
    workdir.mkdir(parents=True, exist_ok=True)
    io.write_json(workdir / "config.json", config.to_dict(), default=str)
    logging.info("pipeline %s -> %s", config.pipeline, workdir)
    start = time.perf_counter()
    with compilation.Tally() as tally:
        out = PIPELINES[config.pipeline](config, workdir)
    timing = {"pipeline": config.pipeline, "wall_s": round(time.perf_counter() - start, 1),
              **tally.summary()}
    logging.info("%s done in %.0f s; XLA: %d programs compiled, %d loaded from the compilation "
                 "cache, %.0f s in all", config.pipeline, timing["wall_s"], timing["compiled"],
                 timing["cache_hits"], timing["seconds"])
    io.write_json(workdir / "timing.json", timing)
    return out
