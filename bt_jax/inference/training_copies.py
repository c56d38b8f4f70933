"""Scans that copy the model's training images: byte-identical or near copies inflate results.

    seen = training_hashes(model)    # {file, sha256, phash, status, split} of its run's files
    flag_training_copies(rows, files, seen, near_bits=config.data.near_duplicate_bits)

Used by `evaluate` (its metrics also without the copies) and `serve` (a warning per upload).
"""

from __future__ import annotations

import logging

from bt_jax import io
from bt_jax.data import manifest
from bt_jax.inference.loading import LoadedModel

log = logging.getLogger(__name__)


def training_hashes(model: LoadedModel) -> list[dict]:
    """{file, sha256, phash, status, split} of every file the model's run saw: stored with
    the model (training_hashes.json), else its run's manifest."""
    for p in (model.root / model.card.get("training_hashes", "training_hashes.json"),
              model.root / "manifest.json"):
        if io.exists(p):
            doc = io.read_json(p)
            return doc["files"] if isinstance(doc, dict) else doc
    log.warning("no training hashes beside %s: copies of training images not checked", model.root)
    return []


def flag_training_copies(rows: list[dict], files, seen: list[dict], near_bits: int,
                         min_corr: float = 0.0) -> None:
    """Marks rows whose file is byte-identical to a training file (sha256), or a near-copy
    of one (`manifest.is_near_copy`, the rule `prepare` uses: e.g. re-encoded or resized):
    both inflate results. Of several near candidates, the closest hash that is confirmed."""
    by_sha = {t["sha256"]: t for t in seen}
    ref = [t for t in seen if t.get("phash")]
    with_hash = [i for i, r in enumerate(rows) if r.get("phash")]
    if min_corr > 0 and ref and not any(t.get("thumb") for t in ref):
        log.warning("the model stores no training thumbnails (made by an older version): near "
                    "copies are flagged by the perceptual hash alone, which also matches "
                    "different scans of similar anatomy")
    near = {}
    pairs = manifest.near_pairs_between([rows[i]["phash"] for i in with_hash],
                                        [t["phash"] for t in ref], near_bits)
    for a, b, d in sorted(pairs, key=lambda p: p[2]):
        i = with_hash[a]
        if i not in near and manifest.is_near_copy(d, rows[i].get("thumb", ""),
                                                   ref[b].get("thumb", ""), near_bits, min_corr):
            near[i] = ref[b]
    for i, (r, f) in enumerate(zip(rows, files)):
        exact, close = by_sha.get(f.sha256), near.get(i)
        t = exact or close
        r.update({"training_duplicate_of": exact["file"] if exact else "",
                  "training_near_duplicate_of": close["file"] if close and not exact else "",
                  "training_split": (t.get("split") or t.get("status", "")) if t else ""})
