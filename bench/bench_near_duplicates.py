"""Near-duplicate flags measured: precision and recall of the hash rule, with and without
the pixel-level confirmation, on planted copies and on pairs of different scans.

    python bench/bench_near_duplicates.py --data ../shared/data/brain_mri_types --n 300

Positives: for `--n` scans sampled from the folder, five planted copies each, made the
way copies arise in public sets: re-encoded (JPEG quality 70), resized (0.8x), re-windowed
(gamma 0.7), cropped (the central 90%), shifted (8% of the side, black fill). Negatives:
pairs of scans from different class folders (a glioma and a pituitary scan are different
images) whose perceptual hashes are within the hash rule's bits, i.e. what the hash rule
alone would flag, plus as many random cross-class pairs. Pairs within one class folder
that the hash rule flags have no ground truth (some are copies, some neighbouring slices);
their thumbnail correlations are reported as a distribution. A pair is flagged when its hashes are within
`data.near_duplicate_bits` (6) and, with the confirmation, when the aligned correlation
(`decode.aligned_correlation`) of the 32x32 grey thumbnails of the scans reaches a
threshold (`data.near_duplicate_min_corr`; several are measured). One JSON line goes to bench/results/near_duplicates.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bt_jax.config import base_config  # noqa: E402
from bt_jax.data import decode, discover, manifest  # noqa: E402


def plant(img: np.ndarray, kind: str) -> np.ndarray:
    """A copy of `img` (H, W, 3) in [0, 1], made the way `kind` says."""
    h, w = img.shape[:2]
    if kind == "reencoded":
        ok, buf = cv2.imencode(".jpg", np.round(img * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 70])
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    if kind == "resized":
        return np.clip(cv2.resize(img, (int(w * 0.8), int(h * 0.8)), interpolation=cv2.INTER_AREA), 0, 1)
    if kind == "rewindowed":
        return img ** 0.7
    if kind == "cropped":
        return img[h // 20:h - h // 20, w // 20:w - w // 20]
    if kind == "shifted":
        m = np.float32([[1, 0, 0.08 * w], [0, 1, 0.08 * h]])
        return cv2.warpAffine(img, m, (w, h), borderValue=0)
    raise ValueError(kind)


KINDS = ("reencoded", "resized", "rewindowed", "cropped", "shifted")


def describe(img: np.ndarray) -> tuple[int, np.ndarray]:
    """What `prepare` stores of a scan for this rule: its pHash and thumbnail."""
    return decode.perceptual_hash(img), decode.thumbnail(img)


def search_times(hashes, bits: int, rng) -> dict:
    """Seconds of the near-pair search (multi-index hashing) over 10k and 100k hashes made
    from the folder's own by flipping 4-16 random bits (its hash distribution, scaled up),
    and of the exhaustive pairwise search at 10k for comparison."""
    import time
    base = np.array(hashes, np.uint64)
    out = {}
    for n in (10_000, 100_000):
        h = base[rng.integers(0, len(base), n)]
        for i in range(n):
            for b in rng.choice(64, rng.integers(4, 17), replace=False):
                h[i] ^= np.uint64(1) << np.uint64(b)
        t0 = time.perf_counter()
        pairs = manifest._near_pairs(h, bits)
        out[f"multi_index_{n}"] = {"s": round(time.perf_counter() - t0, 2), "pairs": len(pairs)}
        if n == 10_000:
            t0 = time.perf_counter()
            exhaustive = sum(int((np.bitwise_count(h[s:s + 500, None] ^ h[None]) <= bits).sum())
                             for s in range(0, n, 500))
            out["exhaustive_10000"] = {"s": round(time.perf_counter() - t0, 2),
                                       "pairs": (exhaustive - n) // 2}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "brain_mri_types"))
    ap.add_argument("--n", type=int, default=300, help="scans that get planted copies")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "near_duplicates.jsonl"))
    a = ap.parse_args()
    c = base_config()
    bits = c.data.near_duplicate_bits
    root = Path(a.data)
    files = discover.discover(root, discover.class_folders(root), tuple(c.data.extensions))
    seen, imgs, hashes, thumbs, cls = set(), [], [], [], []
    for f in files:
        img, _ = decode.decode_file(f.path)
        px = decode.pixel_hash(img)
        if px in seen:  # exact duplicates are another rule's business
            continue
        seen.add(px)
        h, t = describe(img)
        hashes.append(h)
        thumbs.append(t)
        imgs.append(f.path)
        cls.append(f.cls)
    rng = np.random.default_rng(0)
    pos = []  # (kind, hash distance, correlation)
    for i in rng.choice(len(imgs), min(a.n, len(imgs)), replace=False):
        img, _ = decode.decode_file(imgs[i])
        for kind in KINDS:
            h, t = describe(plant(img, kind))
            pos.append((kind, int(np.bitwise_count(np.uint64(h) ^ np.uint64(hashes[i]))),
                        decode.aligned_correlation(t, thumbs[i])))
    pairs = manifest._near_pairs(hashes, bits)
    cand = [p for p in pairs if cls[p[0]] != cls[p[1]]]
    same = [decode.aligned_correlation(thumbs[x], thumbs[y]) for x, y, _ in pairs if cls[x] == cls[y]]
    rand = rng.choice(len(imgs), (max(len(cand), 1000), 2))
    rand = [(int(x), int(y)) for x, y in rand if cls[x] != cls[y]]
    neg = [(d, decode.aligned_correlation(thumbs[x], thumbs[y])) for x, y, d in cand]
    neg_rand = [(int(np.bitwise_count(np.uint64(hashes[x]) ^ np.uint64(hashes[y]))),
                 decode.aligned_correlation(thumbs[x], thumbs[y])) for x, y in rand]
    rules = {"hash": None, **{f"hash+corr>={t}": t for t in (0.8, 0.85, 0.88, 0.9, 0.93, 0.95)}}
    out = {"bench": "near_duplicates", "data": root.name, "scans": len(imgs),
           "planted": len(pos), "cross_class_hash_pairs": len(cand),
           "random_pairs": len(neg_rand), "same_class_hash_pairs": len(same),
           "bits": bits, "rules": {}}
    for name, t in rules.items():
        def hit(d, r, t=t):
            return d <= bits and (t is None or r >= t)
        tp = sum(hit(d, r) for _, d, r in pos)
        fp = sum(hit(d, r) for d, r in neg) + sum(hit(d, r) for d, r in neg_rand)
        out["rules"][name] = {
            "recall": round(tp / len(pos), 4),
            "recall_by_kind": {k: round(np.mean([hit(d, r) for kk, d, r in pos if kk == k]), 4)
                               for k in KINDS},
            "cross_class_pairs_flagged": sum(hit(d, r) for d, r in neg),
            "same_class_pairs_flagged": sum(bits >= 0 and (t is None or r >= t) for r in same),
            "precision": round(tp / max(tp + fp, 1), 4)}
    out["search_seconds"] = search_times(hashes, bits, rng)

    def pct(v):
        return [round(float(q), 3) for q in np.percentile(v, [5, 25, 50, 75, 95])] if v else []
    out.update(date=datetime.date.today().isoformat(),
               corr_percentiles_5_25_50_75_95={"planted": pct([r for _, _, r in pos]),
                                               "cross_class_hash_pairs": pct([r for _, r in neg]),
                                               "same_class_hash_pairs": pct(same)})
    print(json.dumps(out, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
