"""Near-duplicate search: the multi-index search finds exactly the exhaustive search's pairs."""

import numpy as np
import pytest

from bt_jax.data import manifest


def _brute(h, r):
    h = np.asarray(h, np.uint64)
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= r, 1))
    return [(int(a), int(b), int(d[a, b])) for a, b in zip(i, j)]


def _clustered(rng, n_centres=60, per=8, spread=9):
    """Hashes around a few centres (like slices of one scan), some far apart."""
    centres = rng.integers(0, 2**64, n_centres, dtype=np.uint64)
    out = []
    for c in centres:
        for _ in range(per):
            flips = rng.choice(64, rng.integers(0, spread), replace=False)
            out.append(int(c) ^ sum(1 << int(f) for f in flips))
    return out


@pytest.mark.parametrize("r", [1, 3, 4, 6, 8, 11])
def test_near_pairs_equal_the_exhaustive_search(r):
    rng = np.random.default_rng(r)
    h = _clustered(rng) + [int(x) for x in rng.integers(0, 2**64, 300, dtype=np.uint64)]
    h += h[:5]  # exact repeats: distance 0
    assert manifest._near_pairs(h, r) == _brute(h, r)


def test_near_pairs_edge_cases():
    assert manifest._near_pairs([], 6) == [] and manifest._near_pairs([5], 6) == []
    assert manifest._near_pairs([0, 2**64 - 1], 6) == []
    assert manifest._near_pairs([0, 7, 2**64 - 1], 0) == []
    assert manifest._near_pairs(["0", "7"], 3) == [(0, 1, 3)]  # decimal strings, as stored


def test_nearest_hash_matches_brute_force():
    rng = np.random.default_rng(0)
    ref = [int(x) for x in rng.integers(0, 2**64, 500, dtype=np.uint64)]
    q = [ref[3] ^ 0b101, ref[77], int(rng.integers(0, 2**63))]
    idx, dist = manifest.nearest_hash(q, ref)
    assert idx[:2].tolist() == [3, 77] and dist[:2].tolist() == [2, 0]
    full = np.bitwise_count(np.uint64(q[2]) ^ np.array(ref, np.uint64))
    assert dist[2] == full.min() and full[idx[2]] == full.min()
    assert manifest.nearest_hash([], ref)[0].shape == (0,)
