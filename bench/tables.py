"""The docs' generated tables: benchmarks from the benches' JSON lines, and the
configuration reference from the schema (no figure or default typed by hand).

    python bench/tables.py                 # rewrites every generated table in docs/
    python bench/tables.py --check         # exit 1 if a table differs from its source

A table lives between `<!-- table:NAME -->` and `<!-- /table:NAME -->` in a docs file;
NAME picks the renderer below. Bench tables read bench/results/NAME.jsonl (the newest line
per data set, with its date and machine); `config` reads `bt_jax/config/schema.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

from config_reference import config_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _latest(name: str, key: str) -> list[dict]:
    path = RESULTS / f"{name}.jsonl"
    if not path.exists():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            rows[rec[key]] = rec  # later lines replace earlier ones
    return list(rows.values())


def _machine(recs: list[dict]) -> str:
    ms = {(r["machine"]["cpu"], r["machine"]["cores"], r["machine"]["jax"]) for r in recs}
    dates = sorted({r["date"] for r in recs})
    where = "; ".join(f"{cpu}, {cores} cores, JAX {jax}" for cpu, cores, jax in sorted(ms))
    return f"Measured {', '.join(dates)} on {where}."


def _rss(r: dict) -> str:
    """Peak RSS of the largest process; with its helper processes, where measured."""
    tree = r.get("peak_tree_rss_gib")
    helpers = tree and tree > r["peak_rss_gib"] + 0.005   # (a 0.2 s sampler can miss a peak)
    return f"**{r['peak_rss_gib']:.2f} GiB**" + (f" ({tree:.2f} with helpers)" if helpers else "")


def scale_table() -> str:
    recs = sorted(_latest("scale", "data"), key=lambda r: r["n_used"] or 0)
    if not recs:
        return "_No measurement yet: run `python bench/bench_scale.py`._"
    stages = ["preprocess", "deduplicate", "split+manifest"]
    search = ["start+data", "features", "search", "final+CV", "report"]
    head = ("| data | used scans | " + " | ".join(stages) + " | prepare peak RSS | "
            + " | ".join(search) + " | search peak RSS | total |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in recs:
        p, s = r["prepare"], r["frozen_only_search"]
        cells = [r["data"], f"{r['n_used']:,}"]
        cached = {"preprocess", "features"} if r.get("cache_reused") else set()

        def secs(part, k):   # a stage that reused an earlier run's cache has no time here
            return "(cached)" if k in cached else f"{part['stages'].get(k, 0):.0f} s"
        cells += [secs(p, k) for k in stages] + [_rss(p)]
        cells += [secs(s, k) for k in search]
        if "repeated CV" in s["stages"]:  # the part of final+CV spent on repeated CV
            cells[-2] += f" ({s['stages']['repeated CV']:.0f} s CV)"
        total = f"{(p['wall_s'] + s['wall_s']) / 60:.1f} min"
        cells += [_rss(s), total + (" (without the cached stages)" if cached else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _machine(recs)


def scale_train_table() -> str:
    recs = _latest("scale_train", "data")
    if not recs:
        return "_No measurement yet: run `python bench/bench_scale.py --train ... --staged ...`._"
    names = {"method_a_finetune": "method A, 1 fine-tune epoch (Lite0, 224 px, batch {})",
             "method_b_stages": "method B, 5 stages x 1 epoch (VGG19, 112 px, batch {})"}
    lines = ["| run | used scans | wall time | peak RSS |", "|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (r["kind"], -r["batch"], r["n_used"] or 0)):
        name = names[r["kind"]].format(r["batch"])
        lines.append(f"| {name} | {r['n_used']:,} | {r['wall_s'] / 60:.1f} min | "
                     f"{_rss(r)} |")
    return "\n".join(lines) + "\n\n" + _machine(recs)


def near_duplicates_table() -> str:
    recs = _latest("near_duplicates", "data")
    if not recs:
        return "_No measurement yet: run `python bench/bench_near_duplicates.py`._"
    r = recs[-1]
    kinds = list(next(iter(r["rules"].values()))["recall_by_kind"])
    lines = [f"| rule | recall (all {r['planted']} planted) | " + " | ".join(kinds)
             + f" | different-class pairs flagged (of {r['cross_class_hash_pairs']}) | "
             f"same-class hash pairs kept (of {r['same_class_hash_pairs']}) |",
             "|---|" + "---|" * (len(kinds) + 3)]
    for name, v in r["rules"].items():
        lines.append(f"| {name} | {v['recall']:.3f} | "
                     + " | ".join(f"{v['recall_by_kind'][k]:.2f}" for k in kinds)
                     + f" | {v['cross_class_pairs_flagged']} | {v['same_class_pairs_flagged']} |")
    t = r["search_seconds"]
    lines.append("")
    lines.append(f"Near-pair search over hashes shaped like the folder's: 10,000 in "
                 f"{t['multi_index_10000']['s']:.2f} s (exhaustive: {t['exhaustive_10000']['s']:.2f} s), "
                 f"100,000 in {t['multi_index_100000']['s']:.2f} s "
                 f"({t['multi_index_100000']['pairs']:,} pairs). {r['scans']:,} scans of "
                 f"`{r['data']}`; measured {r['date']}.")
    return "\n".join(lines)


PEER_COLUMNS = {"bt_jax/shipped": "bt_jax", "bt_jax/xla-defaults": "bt_jax, XLA defaults",
                "bt_jax/conv3x3=xla": "bt_jax, conv3x3=xla",
                "keras-tensorflow": "Keras 3 (TF)", "keras-jax": "Keras 3 (JAX)",
                "pytorch": "PyTorch + timm"}
PEER_TASKS = {"forward": "forward", "train": "train step", "train_b": "train step, method B head"}


def _peer_column(r: dict) -> str:
    """The table column of a row. bt_jax's rows name the model.conv3x3 they ran with
    (backbones with 3x3 stride-1 convs): the one the config ships now is "bt_jax"."""
    if r["framework"] != "bt_jax":
        return r["framework"]
    conv = r.get("settings", {}).get("conv3x3")
    if r["variant"] != "xla-defaults" and conv and _has_conv3x3(r["backbone"]):
        return "bt_jax/shipped" if conv == _shipped_conv3x3() else f"bt_jax/conv3x3={conv}"
    return f"bt_jax/{r['variant']}"


def _has_conv3x3(name: str) -> bool:
    from bt_jax.models import registry
    return registry.get(name).conv3x3


def _shipped_conv3x3() -> str:
    from bt_jax.config import base_config
    return base_config().model.conv3x3


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def peer_ratio(ours: dict, peer: dict) -> float:
    """bt_jax's speed over a peer's: the median of per-round ratios where both were timed in the
    same alternating rounds (bench_peers.py), else the quotient of their images/s."""
    a, b = ours.get("round_s"), peer.get("round_s")
    if a and b and len(a) == len(b):
        return statistics.median(p / o for o, p in zip(a, b))
    return ours["images_per_s"] / peer["images_per_s"]


def ratio_cell(ours: dict, peer: dict) -> str:
    """The paired ratio in bold; where the quotient of the two cells differs from it by more
    than 5% (a side whose rounds scatter), that quotient too, so neither hides the noise."""
    paired, cells = peer_ratio(ours, peer), ours["images_per_s"] / peer["images_per_s"]
    out = f"**{paired:.2f}**"
    return out if abs(math.log(paired / cells)) <= math.log(1.05) else f"{out} ({cells:.2f} from the cells)"


def peers_markdown(recs: list[dict]) -> str:
    """Images/s of each side's best variant per backbone and task; the ratio of bt_jax (as
    shipped) to the best peer (not bt_jax), with the variant that won; skips listed below."""
    best, skips, order = {}, [], {}
    for r in recs:
        key, col = (r["backbone"], r["task"], r["batch"], r["size"]), _peer_column(r)
        order.setdefault(key, len(order))
        if r.get("skipped"):
            skips.append(f"{PEER_COLUMNS.get(col, col)} {r['backbone']} {r['task']} "
                         f"({r['variant']}): {r['skipped']}")
        elif r["images_per_s"] > best.get((key, col), {"images_per_s": -1})["images_per_s"]:
            best[(key, col)] = r
    cols = [c for c in PEER_COLUMNS if any(k[1] == c for k in best)]   # no all-empty column
    head = ("| backbone | task | " + " | ".join(PEER_COLUMNS[c] for c in cols)
            + " | best peer | bt_jax / best peer | timed |")
    lines = [head, "|---|---|" + "---:|" * len(cols) + "---|---:|---|"]
    for key in sorted(order, key=order.get):
        name, task, batch, size = key
        cells = [_rate(best[(key, c)]["images_per_s"]) if (key, c) in best else "—" for c in cols]
        peers = [best[(key, c)] for c in cols if not c.startswith("bt_jax") and (key, c) in best]
        top = max(peers, key=lambda r: r["images_per_s"], default=None)
        ours = best.get((key, "bt_jax/shipped"))
        won = f"{PEER_COLUMNS[_peer_column(top)]}: {top['variant']}" if top else "—"
        ratio = ratio_cell(ours, top) if top and ours else "—"
        timed = (f"{ours['rounds']} alternating rounds" if ours and ours.get("round_s")
                 else "sides in turn" if ours else "—")
        lines.append(f"| {name} | {PEER_TASKS.get(task, task)}, batch {batch}, {size} px | "
                     + " | ".join(cells) + f" | {won} | {ratio} | {timed} |")
    return "\n".join(lines + ([""] + [f"Skipped: {s}." for s in skips] if skips else []))


def _peer_runs() -> list[dict]:
    """The newest run of each (backbone, task) in bench/results/peers.jsonl: ratios are only
    taken between rows measured side by side; within it the last line per variant wins."""
    path = RESULTS / "peers.jsonl"
    if not path.exists():
        return []
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    newest = {}
    for r in recs:
        k = (r["backbone"], r["task"])
        newest[k] = max(newest.get(k, ""), r["run"])
    rows = {(r["backbone"], r["task"], r["framework"], r["variant"]): r
            for r in recs if r["run"] == newest[(r["backbone"], r["task"])]}
    return list(rows.values())


def peers_table() -> str:
    recs = _peer_runs()
    if not recs:
        return "_No measurement yet: run `.venv-peers/bin/python bench/bench_peers.py` (see its docstring)._"
    versions = {}
    for r in recs:
        versions.update(r.get("versions", {}))
    threads = sorted({r["threads"] for r in recs})
    return (peers_markdown(recs) + "\n\n" + _machine(recs) + " Versions: "
            + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
            + f"; {', '.join(map(str, threads))} threads on every side.")


def peers_summary() -> str:
    """The README's speed table: per backbone and task, bt_jax's images/s against the best
    peer of the same run, naming the peer and its variant."""
    recs = [r for r in _peer_runs() if not r.get("skipped")]
    if not recs:
        return "_No peer measurement yet: see [docs/benchmarks.md](docs/benchmarks.md)._"
    best = {}
    for r in recs:
        side = "ours" if _peer_column(r) == "bt_jax/shipped" else (
            None if r["framework"].startswith("bt_jax") else "peer")
        k = (r["backbone"], r["task"], side)
        if side and r["images_per_s"] > best.get(k, {"images_per_s": -1})["images_per_s"]:
            best[k] = r
    lines = ["| backbone, task (images/s) | bt_jax | best peer | ratio |", "|---|---:|---|---:|"]
    for (name, task, side), ours in best.items():
        top = best.get((name, task, "peer"))
        if side != "ours" or not top:
            continue
        peer = f"{PEER_COLUMNS[_peer_column(top)]} ({top['variant']}) {_rate(top['images_per_s'])}"
        lines.append(f"| {name}, {PEER_TASKS.get(task, task)} | {_rate(ours['images_per_s'])} | "
                     f"{peer} | {ratio_cell(ours, top)} |")
    return "\n".join(lines) + "\n\n" + _machine(recs)


def pruning_table() -> str:
    """Per data set (its newest run): each study's trials/min and best CV accuracy, whole
    and at the unpruned study's wall time."""
    path = RESULTS / "pruning.jsonl"
    if not path.exists():
        return "_No measurement yet: run `python bench/bench_pruning.py` (see its docstring)._"
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    newest = {}
    for r in recs:
        newest[r["data"]] = max(newest.get(r["data"], ""), r["date"])
    recs = list({(r["data"], r["pruner"]): r for r in recs if r["date"] == newest[r["data"]]}.values())
    lines = ["| data (CV rows) | pruner | trials (pruned) | wall time | trials/min | vs unpruned | "
             "best CV acc at the unpruned wall time (trials by then) | best CV acc, whole study |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in recs:
        base = next(b for b in recs if b["data"] == r["data"] and b["pruner"] == "none")
        at_time = (f"{r['best_cv_acc_at_equal_time']:.3f} ({r['trials_at_equal_time']})"
                   if "best_cv_acc_at_equal_time" in r else
                   f"{r['best_cv_acc']:.3f} [{r['best_ci95'][0]:.3f}, {r['best_ci95'][1]:.3f}] ({r['trials']})")
        lines.append(f"| {r['data']} ({r['cv_val_rows']:,}) | {r['pruner']} | {r['trials']} "
                     f"({r['pruned']}) | {r['wall_s'] / 60:.1f} min | {r['trials_per_min']:.1f} | "
                     f"**{r['trials_per_min'] / base['trials_per_min']:.2f}x** | {at_time} | "
                     f"{r['best_cv_acc']:.3f} |")
    return "\n".join(lines) + "\n\n" + _machine(recs)


def _widest_count(r: dict) -> tuple[str, int, int] | None:
    """(widest units, trials that drew it, trials): the widest head's step is memory-bound."""
    by = r.get("trials_by_units") or {}
    if not by:
        return None
    u = max(by, key=int)
    return u, by[u], sum(by.values())


def _widest(r: dict) -> str:
    """"21 of 150 (1024 units)", or "—" for rows without the count."""
    w = _widest_count(r)
    return f"{w[1]} of {w[2]} ({w[0]} units)" if w else "—"


def search_table() -> str:
    """The head search against Keras fit loops on the same features and trial settings:
    the newest run per Keras backend."""
    recs = [r for r in _latest("search", "keras_backend") if r.get("keras_trials")]
    if not recs:
        return ("_No measurement yet: run `python bench/bench_search.py --keras-trials 10` "
                "(see its docstring)._")
    lines = ["| Keras backend | bt_jax trials/min (every compile included) | Keras `fit`, a new "
             "model per fold | Keras `fit`, one model reset per fold | bt_jax / faster Keras "
             "loop | best CV acc | trials with the widest head |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(recs, key=lambda r: r["keras_backend"]):
        k = r["keras_trials_per_min"]
        lines.append(f"| {r['keras_backend']} (Keras {r.get('keras_version', '?')}) | "
                     f"{r['trials_per_min']:.1f} | {k['rebuild']:.2f} | {k['reuse']:.2f} | "
                     f"**{r['keras_ratio']:.1f}x** | {r['best_cv_acc']:.3f} | {_widest(r)} |")
    r = recs[0]
    return ("\n".join(lines) + f"\n\n{r['trials']} trials of the reference set's {r['images']} "
            f"scans + {r['copies']} copies (D={r['feature_dim']}); Keras reruns "
            f"{r['keras_trials']} of them. " + _machine(recs))


def search_summary() -> str:
    """The README's sentence on the head search, from the newest TensorFlow-backend run."""
    recs = [r for r in _latest("search", "keras_backend")
            if r.get("keras_trials") and r["keras_backend"] == "tensorflow"]
    if not recs:
        return "_No head-search measurement against Keras on TensorFlow yet._"
    r = recs[0]
    return (f"The head search (method A's k-fold search over heads on cached features) ran "
            f"**{r['keras_ratio']:.1f}x** the trials per minute of the faster of two "
            f"Keras-on-TensorFlow `fit` loops on the same features and settings, one model per "
            f"trial reset before each fold ({r['date']}, `bench/bench_search.py`)"
            + (f"; {w[1]} of its {w[2]} trials drew the widest head ({w[0]} units), whose step "
               f"is memory-bound: the ratio moves with the mix of widths TPE draws (see the docs)."
               if (w := _widest_count(r)) else "."))


RENDERERS = {"pruning": pruning_table, "search": search_table, "search_summary": search_summary, "scale": scale_table, "scale_train": scale_train_table, "config": config_table,
             "near_duplicates": near_duplicates_table, "peers": peers_table,
             "peers_summary": peers_summary}


def render(text: str) -> str:
    def one(m):
        return f"<!-- table:{m[1]} -->\n{RENDERERS[m[1]]()}\n<!-- /table:{m[1]} -->"
    return re.sub(r"<!-- table:(\w+) -->.*?<!-- /table:\1 -->", one, text, flags=re.S)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    stale = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        old = doc.read_text()
        new = render(old)
        if new != old:
            stale.append(doc.name)
            if not a.check:
                doc.write_text(new)
    if a.check and stale:
        sys.exit(f"tables out of date in {stale}: run python bench/tables.py")
    print(("out of date: " if a.check else "rewritten: ") + (", ".join(stale) or "none"))


if __name__ == "__main__":
    main()
