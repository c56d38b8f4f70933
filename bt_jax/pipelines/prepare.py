"""Pipeline `prepare`: build the data set, write the manifest, print a summary.

    python launch.py --config=configs/quickstart.py --config.pipeline=prepare --workdir=W
"""

from __future__ import annotations

import logging
from pathlib import Path

from bt_jax.data import dataset, manifest


def summary_line(ds: dataset.Dataset) -> str:
    s = manifest.summary(ds.records)
    tag = " [SYNTHETIC phantoms]" if ds.synthetic else ""
    reasons = ", ".join(f"{k}: {v}" for k, v in s["skip_reasons"].items()) or "none"
    return (f"{ds.root}{tag}: {s['files_seen']} files seen, {s['used']} used, "
            f"{s['duplicates_dropped']} exact duplicates in {s['duplicate_groups']} groups, "
            f"{s['near_duplicate_pairs']} near-duplicate pairs, {s['skipped']} skipped "
            f"({reasons}); test {len(ds.splits.test)}, {ds.splits.k} folds")


def run(config, workdir: Path) -> dataset.Dataset:
    ds = dataset.prepare_dataset(config, workdir)
    line = summary_line(ds)
    logging.info(line)
    print(line)
    print(f"manifest: {Path(workdir) / 'manifest.json'} (and manifest.csv)")
    return ds
