"""The peer bench's timing protocol: sides built once, timed in alternating rounds, and
ratios taken per round (bench/bench_peers.py, bench/tables.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import tables  # noqa: E402


def test_the_ratio_is_the_median_of_paired_rounds():
    ours = {"images_per_s": 10.0, "round_s": [1.0, 2.0, 1.0]}
    peer = {"images_per_s": 5.0, "round_s": [2.0, 2.0, 3.0]}
    assert tables.peer_ratio(ours, peer) == 2.0           # rounds: 2, 1, 3
    # rows without rounds (older runs), or of different runs: the quotient of the cells
    assert tables.peer_ratio({"images_per_s": 10.0}, peer) == 2.0
    assert tables.peer_ratio(ours, {"images_per_s": 4.0, "round_s": [1.0]}) == 2.5


@pytest.mark.slow
def test_two_sides_are_timed_in_alternating_rounds(tmp_path):
    out = tmp_path / "peers.jsonl"
    p = subprocess.run(
        [sys.executable, "bench/bench_peers.py", "--backbones", "efficientnet_lite0",
         "--tasks", "forward", "--frameworks", "bt_jax", "bt_jax-defaults", "--batch", "2",
         "--size", "32", "--rounds", "3", "--python", sys.executable, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert {(r["framework"], r["variant"]) for r in rows} == {("bt_jax", "shipped"),
                                                             ("bt_jax", "xla-defaults")}
    for r in rows:
        assert "skipped" not in r, r
        assert len(r["round_s"]) == 3 and len(r["batch_s_all"]) == 3 and r["images_per_s"] > 0
        assert r["round_warmup"] == 1 and r["setup_s"] > 0
    assert "| efficientnet_lite0 | forward, batch 2, 32 px |" in p.stdout
