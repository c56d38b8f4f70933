"""Markdown evaluation reports and metrics.json, written atomically.

    r = metrics.classification_report(y, prob)
    write_metrics_json(wd / "metrics.json", r)
    write_markdown_report(wd / "report.md", title="ResNet50V2 head, test set",
                          sections=[evaluation_section(r, ["cm.png", "roc.png"])])

A section is `(heading, markdown_body)` or `(heading, markdown_body, image_paths)`; image
paths are relative to the report's folder (absolute paths are made relative) and must
exist, so a report never links a figure that was not written.
"""

from __future__ import annotations

import json
import os
import math
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.reporting.metrics import format_cell, table_markdown

SMALL_TEST_SET = 100  # below this many cases the report says how wide the CIs are


def _plain(x):
    """Numpy scalars/arrays to Python; NaN/inf to None (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return _plain(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"report_dict: value of type {type(x).__name__} is not JSON-serialisable: {x!r}")


def write_metrics_json(path, report_dict: dict) -> Path:
    """Writes `report_dict` as strict JSON (NaN -> null), via temp file + os.replace."""
    text = json.dumps(_plain(report_dict), indent=2, allow_nan=False) + "\n"
    return io.write_text(path, text)


def _image_links(report_dir: Path, images) -> list[str]:
    links = []
    for img in images:
        p = Path(img)
        rel = Path(os.path.relpath(p.resolve(), report_dir)) if p.is_absolute() else p
        if not (report_dir / rel).is_file():
            raise FileNotFoundError(f"sections: image {str(img)!r} not found at "
                                    f"{str(report_dir / rel)!r} (paths are relative to the report)")
        target = rel.as_posix()
        links.append(f"![{rel.stem}](<{target}>)" if " " in target else f"![{rel.stem}]({target})")
    return links


def write_markdown_report(path, *, title: str, sections) -> Path:
    """Writes `# title` then one `## heading` per section with its body and images."""
    path = Path(path)
    parts = [f"# {title}", ""]
    for i, section in enumerate(sections):
        if not isinstance(section, (tuple, list)) or len(section) not in (2, 3):
            raise ValueError(f"sections[{i}]: expected (heading, body) or (heading, body, images), "
                             f"got {section!r:.80}")
        heading, body = section[0], section[1]
        images = section[2] if len(section) == 3 and section[2] else []
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        parts += [f"## {heading}", ""]
        if body:
            parts += [str(body).rstrip(), ""]
        for link in _image_links(path.parent.resolve(), images):
            parts += [link, ""]
    return io.write_text(path, "\n".join(parts))


def _cm_table(report: dict) -> str:
    (tn, fp), (fn, tp) = report["confusion_matrix"]
    c0, c1 = report["class_names"]
    return "\n".join([
        f"| true \\ predicted | {c0} | {c1} |", "|---|---|---|",
        f"| {c0} | {tn} (TN) | {fp} (FP) |", f"| {c1} | {fn} (FN) | {tp} (TP) |"])


def _with_counts(e: dict) -> str:
    """'0.929 [0.79, 1.00] (13/14; Wilson 0.69-0.99)'."""
    s = format_cell(e)
    if "k" in e and e.get("of"):
        lo, hi = e["wilson"]
        s += f" ({e['k']}/{e['of']}; Wilson {lo:.2f}–{hi:.2f})"
    return s


def _entries(r: dict):
    """(name, entry) for every metric with a CI, e.g. ('yes/precision', {...})."""
    for block in (*r["per_class"], "macro", "weighted"):
        src = r["per_class"][block] if block in r["per_class"] else r[block]
        for m, e in src.items():
            if isinstance(e, dict):
                yield f"{block}/{m}", e
    for k, e in r.items():
        if isinstance(e, dict) and "n_valid" in e:
            yield k, e


def _honesty_notes(r: dict, small: int) -> list[str]:
    notes = []
    level = f"{100 * r['ci_level']:.0f}%"
    acc = r["accuracy"]
    if r["n"] < small:
        counts = ", ".join(f"{k} {v['support']}" for k, v in r["per_class"].items())
        wl, wh = acc["wilson"]
        spread = (f"the {level} bootstrap CI of accuracy spans {acc['ci'][0]:.2f}–{acc['ci'][1]:.2f}"
                  f" (Wilson {wl:.2f}–{wh:.2f})" if acc.get("ci")
                  else f"the {level} Wilson interval of accuracy spans {wl:.2f}–{wh:.2f}")
        notes.append(
            f"**Small test set.** n={r['n']} ({counts}): {spread}; one error more or less moves "
            f"accuracy by {1 / r['n']:.3f}. Two models whose intervals overlap this much are "
            "not shown to differ by these numbers; compare them on the same cases with a paired "
            "bootstrap (`metrics.paired_difference`).")
    collapsed = [k for k, e in _entries(r) if e.get("ci") and e["value"] in (0.0, 1.0)
                 and e["ci"][0] == e["ci"][1] == e["value"]]
    if collapsed:
        notes.append(
            f"**Zero-width CIs** ({', '.join(collapsed)}): every resample scored the same "
            "because the test set holds no counter-example, not because the value is certain. "
            "Proportions also carry a Wilson interval, which does not collapse (sensitivity and "
            "specificity above; `wilson` in metrics.json).")
    low = {k: e for k, e in _entries(r) if r["n_boot"] and 0 < e["n_valid"] < 0.9 * r["n_boot"]}
    if low:
        notes.append("**Partly undefined resamples**: " + ", ".join(
            f"{k} {v['n_valid']}/{r['n_boot']}" for k, v in low.items())
            + " valid (the rest had a 0/0 and were dropped).")
    if r.get("undefined"):
        notes.append("**Undefined** (shown as n/a): " + "; ".join(
            f"{k}: {why}" for k, why in r["undefined"].items()) + ".")
    return notes


def evaluation_section(report_dict: dict, images=(), *, heading: str = "Test-set evaluation",
                       small_n: int = SMALL_TEST_SET):
    """One report section: metrics table with CIs, confusion matrix, sensitivity and
    specificity, and honesty notes (small n, zero-width CIs, undefined metrics)."""
    r = report_dict
    level = f"{100 * r['ci_level']:.0f}%"
    ci_line = (f"Cells: value [{level} CI], {r['ci_method']}, {r['n_boot']} resamples, "
               f"seed {r['seed']}." if r["n_boot"] else "No bootstrap (n_boot=0): no CIs.")
    body = [
        f"n={r['n']} cases, positive class **{r['positive']}**, predicted positive when "
        f"P({r['positive']}) ≥ {r['threshold']:g}. {ci_line}", "",
        table_markdown(r), "",
        f"- Sensitivity (recall of {r['positive']}): {_with_counts(r['sensitivity'])}",
        f"- Specificity (recall of {r['class_names'][0]}): {_with_counts(r['specificity'])}",
        f"- Balanced accuracy: {format_cell(r['balanced_accuracy'])}", "",
        "Confusion matrix (rows true, columns predicted):", "", _cm_table(r),
    ]
    notes = _honesty_notes(r, small_n)
    if notes:  # one blockquote, paragraphs separated by a bare ">"
        body += ["", "\n>\n".join(f"> {n}" for n in notes)]
    return (heading, "\n".join(body), list(images))
