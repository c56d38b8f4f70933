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


def test_a_ratio_cell_shows_the_cells_quotient_where_it_disagrees():
    ours = {"images_per_s": 10.0, "round_s": [1.0, 2.0, 1.0]}
    assert tables.ratio_cell(ours, {"images_per_s": 5.0, "round_s": [2.0, 2.0, 3.0]}) == "**2.00**"
    scattered = {"images_per_s": 8.0, "round_s": [2.0, 2.0, 3.0]}    # paired 2.00, cells 1.25
    assert tables.ratio_cell(ours, scattered) == "**2.00** (1.25 from the cells)"


def test_skip_variants_leaves_out_named_variants_before_building():
    import bench_peers
    a = bench_peers.parse(["--skip-variants", "conv3x3=xla"])
    every = bench_peers.chosen_variants("bt_jax", "resnet50v2", "train", bench_peers.parse([]))
    kept = bench_peers.chosen_variants("bt_jax", "resnet50v2", "train", a)
    assert [v for v, _ in every] == ["shipped", "conv3x3=xla"]
    assert [v for v, _ in kept] == ["shipped"]


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
