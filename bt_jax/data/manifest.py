"""The manifest: one row per file seen, with its hash, duplicate group, split and fate.

    rows = dedupe(files, metas, near_bits=6)   # status "used" | "duplicate" | "skipped"
    assign_splits(rows, used, splits)
    write(workdir, dataset, params)            # workdir/manifest.json + manifest.csv

Exact duplicates (same decoded pixels) form a group; its first file (sorted path) is
used, the rest are marked "duplicate" and inherit its split. A group whose copies sit in
different class folders has contradictory labels: every copy is skipped. Near-duplicates
(`is_near_copy`: pHash within a few bits, confirmed by the correlation of grey
thumbnails; in the reference set, the same scan saved at another size) are listed, and
by default also kept on one side of every split. `evaluate` applies the same rule to
external scans against a model's training scans.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.errors import UserError
from bt_jax.data import decode, volumes

CSV_FIELDS = ("file", "class", "sha256", "status", "reason", "duplicate_group", "duplicate_of",
              "near_duplicates", "split", "crop", "width", "height", "bits", "channels", "phash")


def _hashes(phashes) -> np.ndarray:
    """64-bit perceptual hashes (ints or decimal strings) as uint64."""
    return np.array([int(p) for p in phashes], dtype=np.uint64).reshape(-1)


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b).astype(np.int64)


def nearest_hash(query, reference) -> tuple[np.ndarray, np.ndarray]:
    """For each query pHash: (index of the nearest reference pHash, Hamming distance).
    Exhaustive (the nearest at any distance), in blocks of ~4M pairs of XOR + popcount."""
    if not len(query) or not len(reference):
        return np.full(len(query), -1), np.full(len(query), 65)
    q, r = _hashes(query), _hashes(reference)
    block = max(1, 4_000_000 // len(r))
    idx, dist = [], []
    for s in range(0, len(q), block):
        d = _distance(q[s:s + block, None], r[None, :])
        idx.append(d.argmin(1))
        dist.append(d.min(1))
    return np.concatenate(idx), np.concatenate(dist)


CHUNKS = 4  # 16-bit pieces of a 64-bit hash for the multi-index search
MAX_PAIRS_PER_IMAGE = 20  # hash pairs per image beyond which they cannot all be copies


def _flip_masks(bits: int) -> np.ndarray:
    """Every 16-bit mask with at most `bits` ones."""
    masks = np.arange(1 << 16, dtype=np.uint32)
    return masks[np.bitwise_count(masks) <= bits]


class TooManyPairs(UserError, ValueError):
    """The hash search found far more near pairs than copies make (one template, e.g.
    synthetic phantoms): the count is in the message."""


def _near_pairs(phashes, max_bits: int, max_pairs: int | None = None) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j with Hamming distance <= max_bits.

    Multi-index hashing: cut each hash into 4 pieces of 16 bits; two hashes within r bits
    agree within r // 4 bits on at least one piece (pigeonhole), so only pairs whose
    pieces match up to those flips are compared, found by sorting, not by comparing all
    pairs. Sub-quadratic for spread-out hashes; the same pairs as the exhaustive search."""
    h = _hashes(phashes)
    n = len(h)
    if n < 2 or max_bits <= 0:
        return []
    pieces = [((h >> np.uint64(16 * c)) & np.uint64(0xFFFF)).astype(np.int64)
              for c in range(CHUNKS)]
    found, total = [], 0
    for piece in pieces:
        order = np.argsort(piece, kind="stable")
        sorted_piece = piece[order]
        for mask in _flip_masks(max_bits // CHUNKS).astype(np.int64):
            lo = np.searchsorted(sorted_piece, piece ^ mask, "left")
            hi = np.searchsorted(sorted_piece, piece ^ mask, "right")
            found.append(_verified(h, order, lo, hi - lo, max_bits))
            total += len(found[-1])  # counts repeats across pieces: an upper bound
            if max_pairs is not None and total > CHUNKS * max_pairs:
                raise TooManyPairs(f"more than {max_pairs:,} pairs of {n:,} images have "
                                   f"perceptual hashes within {max_bits} bits")
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
    d = _distance(h[pairs[:, 0]], h[pairs[:, 1]])
    return [(int(i), int(j), int(k)) for (i, j), k in zip(pairs, d)]


def _verified(h, order, lo, counts, max_bits, block: int = 2_000_000) -> np.ndarray:
    """Candidate pairs (i, order[lo[i] + t]) for t < counts[i], kept if i < j and within
    max_bits; expanded in blocks of about `block` candidates."""
    out, ends = [], np.cumsum(counts)
    start = 0
    while start < len(counts):
        stop = int(np.searchsorted(ends, (ends[start] - counts[start]) + block, "right"))
        stop = max(stop, start + 1)
        c = counts[start:stop]
        i = np.repeat(np.arange(start, stop), c)
        offs = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        j = order[np.repeat(lo[start:stop], c) + offs]
        keep = (i < j) & (_distance(h[i], h[j]) <= max_bits)
        out.append(np.stack([i[keep], j[keep]], 1))
        start = stop
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def is_near_copy(bits: int, thumb_a, thumb_b, near_bits: int, min_corr: float) -> bool:
    """The near-duplicate rule (prepare and evaluate alike): perceptual hashes within
    `near_bits` and, when `min_corr` > 0 and both thumbnails are known, an aligned
    correlation of the 32x32 grey thumbnails (`decode.aligned_correlation`) of at least
    `min_corr`. The hash alone also matches different scans of similar anatomy
    (bench/bench_near_duplicates.py: pairs from different class folders); the
    correlation rejects most of those."""
    if bits > near_bits:
        return False
    if min_corr <= 0 or not thumb_a or not thumb_b:
        return True
    return decode.aligned_correlation(decode.thumb_from_text(thumb_a),
                                      decode.thumb_from_text(thumb_b), stop_at=min_corr) >= min_corr


def near_pairs_between(query, reference, max_bits: int) -> list[tuple[int, int, int]]:
    """(query index, reference index, distance) of every pair within max_bits."""
    both = list(query) + list(reference)
    n = len(query)
    return [(i, j - n, d) for i, j, d in _near_pairs(both, max_bits) if i < n <= j]


def dedupe(files, metas, near_bits: int, min_corr: float = 0.0) -> list[dict]:
    rows = []
    for f, m in zip(files, metas):
        rows.append({"file": f.rel, "class": f.cls, "sha256": f.sha256,
                     "status": "used" if m["ok"] else "skipped", "reason": m.get("reason", ""),
                     "duplicate_group": "", "duplicate_of": "", "near_duplicates": [],
                     "split": "", "crop": m.get("crop", ""), "width": m.get("width", ""),
                     "height": m.get("height", ""), "bits": m.get("bits", ""),
                     "channels": m.get("channels", ""), "phash": m.get("phash") or "",
                     "_pixel": m.get("pixel_hash"), "_thumb": m.get("thumb", "")})
    groups = collections.defaultdict(list)
    for i, r in enumerate(rows):
        if r["status"] == "used":
            groups[r["_pixel"]].append(i)
    gid = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        name = f"dup{gid:03d}"
        gid += 1
        classes = sorted({rows[i]["class"] for i in members})
        for i in members:
            rows[i]["duplicate_group"] = name
        if len(classes) > 1:
            for i in members:
                rows[i].update(status="skipped", reason=f"identical pixels in classes {classes} "
                               f"({', '.join(rows[j]['file'] for j in members)})")
            continue
        for i in members[1:]:
            rows[i].update(status="duplicate", duplicate_of=rows[members[0]]["file"],
                           reason=f"exact duplicate of {rows[members[0]]['file']}")
    used = [i for i, r in enumerate(rows) if r["status"] == "used"]
    ph = [rows[i]["phash"] for i in used]
    parent = list(range(len(used)))  # union-find over near-duplicate pairs

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    try:  # real copies come in small groups: ~1 pair per image in public sets
        pairs = _near_pairs(ph, near_bits, max_pairs=MAX_PAIRS_PER_IMAGE * max(len(ph), 1))
    except TooManyPairs as e:
        raise TooManyPairs(f"{e}: these are not copies but images of one look (e.g. "
                           "synthetic phantoms), and grouping them would chain the data set "
                           "into a few giant groups; lower config.data.near_duplicate_bits "
                           "(0: exact duplicates only)") from e
    for a, b, d in pairs:
        i, j = used[a], used[b]
        if not is_near_copy(d, rows[i]["_thumb"], rows[j]["_thumb"], near_bits, min_corr):
            rows[i]["_rejected"] = rows[i].get("_rejected", 0) + 1
            continue
        rows[i]["near_duplicates"].append(f"{rows[j]['file']} ({d} bits)")
        rows[j]["near_duplicates"].append(f"{rows[i]['file']} ({d} bits)")
        if rows[i]["class"] == rows[j]["class"]:  # across classes: flagged, not grouped
            parent[root(a)] = root(b)
    for a, i in enumerate(used):
        rows[i]["_near_group"] = root(a)
    return rows


def split_groups(rows: list[dict], used: list[int], group_near: bool) -> np.ndarray:
    """Group id per used image for splitting: near-duplicates share one when group_near,
    and the slices of one NIfTI volume always do (one patient's scan on one side)."""
    group = [rows[i]["_near_group"] if group_near else a for a, i in enumerate(used)]
    parent, first_of_volume = {}, {}  # union-find over group ids

    def root(g):
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    for a, i in enumerate(used):
        vol = volumes.volume_of(rows[i]["file"])
        if vol is not None:
            ra, rb = root(group[a]), root(first_of_volume.setdefault(vol, group[a]))
            if ra != rb:
                parent[ra] = rb
    return np.array([root(g) for g in group])


def assign_splits(rows: list[dict], used: list[int], splits) -> None:
    names = splits.assignment()
    by_file = {}
    for pos, i in enumerate(used):
        rows[i]["split"] = str(names[pos])
        by_file[rows[i]["file"]] = rows[i]["split"]
    for r in rows:
        if r["status"] == "duplicate":
            r["split"] = by_file[r["duplicate_of"]]


def summary(rows: list[dict]) -> dict:
    st = collections.Counter(r["status"] for r in rows)
    groups = {r["duplicate_group"] for r in rows if r["duplicate_group"]}
    return {"files_seen": len(rows), "used": st["used"], "duplicates_dropped": st["duplicate"],
            "skipped": st["skipped"], "duplicate_groups": len(groups),
            "files_in_duplicate_groups": sum(1 for r in rows if r["duplicate_group"]),
            "near_duplicate_pairs": sum(len(r["near_duplicates"]) for r in rows) // 2,
            "near_hash_pairs_rejected": sum(r.get("_rejected", 0) for r in rows),
            "skip_reasons": dict(collections.Counter(r["reason"].split(" (")[0]
                                                     for r in rows if r["status"] == "skipped"))}


def write(workdir: Path, ds, params) -> Path:
    workdir = Path(workdir)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in ds.records]
    split_counts = collections.defaultdict(lambda: collections.Counter())
    for r in public:
        if r["status"] == "used":
            split_counts[r["split"]][r["class"]] += 1
    doc = {
        "synthetic": ds.synthetic,
        "data_dir": str(ds.root),
        "classes": list(ds.classes),
        "positive": ds.positive,
        "preprocess": dataclasses.asdict(params),
        "preprocess_key": params.key(),
        "summary": summary(ds.records),
        "hidden_skipped": list(ds.hidden),  # dot-files/folders (e.g. .ipynb_checkpoints): not read
        "split_counts": {k: dict(v) for k, v in sorted(split_counts.items())},
        "files": public,
    }
    io.write_json(workdir / "manifest.json", doc)

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in public:
            w.writerow({**r, "near_duplicates": "; ".join(r["near_duplicates"])})
    io.atomic_write(workdir / "manifest.csv", write_csv)
    return workdir / "manifest.json"


def read(workdir: Path) -> dict:
    return io.read_json(Path(workdir) / "manifest.json")
