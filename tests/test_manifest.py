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


def _sig(img):
    from bt_jax.data import decode
    return decode.perceptual_hash(img), decode.thumb_to_text(decode.thumbnail(img))


def test_near_copy_rule_keeps_copies_and_rejects_lookalikes(real_data_dir):
    """Planted copies of a real scan pass; two different scans whose hashes are within the
    bits (Y153 and Y81 of the reference set, 6 bits apart) do not, unless the hash alone
    decides (min_corr 0)."""
    import cv2
    from bt_jax.data import decode
    img, _ = decode.decode_file(real_data_dir / "yes" / "Y153.jpg")
    h, t = _sig(img)
    small = cv2.resize(img, (img.shape[1] * 4 // 5, img.shape[0] * 4 // 5),
                       interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.round(img * 255).astype(np.uint8)[:, :, ::-1],
                           [cv2.IMWRITE_JPEG_QUALITY, 70])
    jpeg = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255
    for copy in (small, jpeg, img ** 0.7):
        hc, tc = _sig(copy)
        d = int(np.bitwise_count(np.uint64(h) ^ np.uint64(hc)))
        assert manifest.is_near_copy(d, t, tc, 6, 0.85), d
    other, _ = decode.decode_file(real_data_dir / "yes" / "Y81.jpg")
    ho, to = _sig(other)
    d = int(np.bitwise_count(np.uint64(h) ^ np.uint64(ho)))
    assert d <= 6 and not manifest.is_near_copy(d, t, to, 6, 0.85)
    assert manifest.is_near_copy(d, t, to, 6, 0.0)  # the hash alone flags them
    assert manifest.is_near_copy(d, "", to, 6, 0.85)  # no thumbnail (older cache): the hash
    assert not manifest.is_near_copy(7, t, t, 6, 0.85)  # beyond the bits: never


def test_hash_pairs_beyond_copies_are_refused():
    h = [0] * 50 + [1] * 50  # one look: every pair within 1 bit
    with pytest.raises(manifest.TooManyPairs, match="more than"):
        manifest._near_pairs(h, 1, max_pairs=100)
    assert len(manifest._near_pairs(h, 1)) == 100 * 99 // 2


def test_prepare_refuses_a_chain_of_lookalikes_in_one_line():
    from pathlib import Path
    from bt_jax.data.discover import FileRecord
    files = [FileRecord(Path(f"/x/{i}.png"), f"no/{i}.png", "no", 0, f"{i:064x}", 1, True)
             for i in range(60)]
    metas = [{"ok": True, "pixel_hash": str(i), "phash": str(i % 2)} for i in range(60)]
    with pytest.raises(manifest.TooManyPairs, match="lower config.data.near_duplicate_bits"):
        manifest.dedupe(files, metas, near_bits=2)
    rows = manifest.dedupe(files, metas, near_bits=0)  # exact duplicates only: fine
    assert all(r["status"] == "used" and not r["near_duplicates"] for r in rows)
