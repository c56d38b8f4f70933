"""One self-contained HTML report per run: W/report.html, every figure embedded as base64.

    write_html_report(W)                          # report.md of the run + any W/gradcam*/ PNGs
    write_html_report(W, gradcam_examples=4)      # + Grad-CAM of 4 test-split scans (model.json)
    write_html_report(W, title=..., predictions=rows, summary=summary)   # predict pipeline

The markdown that `report.write_markdown_report` writes (headings, paragraphs, pipe tables,
lists, block quotes, images) is converted by a small renderer for exactly that subset, so
the HTML says the same as report.md, with no template engine and nothing fetched over the
network when it is opened. Metric tables carry class "metrics".
"""

from __future__ import annotations

import base64
import html
import logging
import re
from pathlib import Path

from bt_jax import io

log = logging.getLogger(__name__)
MAX_GRADCAM = 24          # overlays embedded per folder (the rest are only linked on disk)
MAX_PRED_ROWS = 200       # prediction rows shown (the CSV has them all)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f0f0f0}
table.metrics td{font-variant-numeric:tabular-nums}
blockquote{border-left:4px solid #d9a400;background:#fff8e1;margin:1em 0;padding:.4em 1em}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:480px}
.gallery figure img{max-width:260px}figcaption{font-size:.8em;color:#555}
.flagged{background:#fff3cd}.error,.skipped{background:#f8d7da}
code{background:#f4f4f4;padding:0 .2em}
"""


def _img_tag(path: Path, alt: str, width: str = "") -> str:
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    data = base64.b64encode(io.read_bytes(path)).decode("ascii")
    style = f' style="max-width:{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}"{style}>'


def _inline(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)


def _table(lines: list[str]) -> str:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    rows = [r for r in rows if not all(re.fullmatch(r":?-{3,}:?", c) for c in r if c)]
    cls = ' class="metrics"' if rows and rows[0][0] == "Metric" else ""
    head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_IMG = re.compile(r"^!\[([^\]]*)\]\(<?([^>)]+)>?\)$")


def markdown_to_html(text: str, base: Path) -> str:
    """The subset of markdown our reports use -> HTML; images (relative to `base`) inlined."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        ln = lines[i]
        s = ln.strip()
        if not s:
            i += 1
        elif m := re.match(r"^(#{1,4}) (.*)$", s):
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
        elif s.startswith("|"):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
        elif m := _IMG.match(s):
            p = base / m.group(2)
            out.append(f"<figure>{_img_tag(p, m.group(1))}<figcaption>{html.escape(m.group(1))}"
                       "</figcaption></figure>" if p.is_file()
                       else f"<p>[missing figure {html.escape(m.group(2))}]</p>")
            i += 1
        elif s.startswith(">"):
            j, paras, cur = i, [], []
            while j < len(lines) and lines[j].strip().startswith(">"):
                t = lines[j].strip()[1:].strip()
                if t:
                    cur.append(t)
                elif cur:
                    paras.append(" ".join(cur))
                    cur = []
                j += 1
            paras += [" ".join(cur)] if cur else []
            out.append("<blockquote>" + "".join(f"<p>{_inline(p)}</p>" for p in paras)
                       + "</blockquote>")
            i = j
        elif s.startswith("- "):
            j = i
            while j < len(lines) and lines[j].strip().startswith("- "):
                j += 1
            out.append("<ul>" + "".join(f"<li>{_inline(x.strip()[2:])}</li>" for x in lines[i:j])
                       + "</ul>")
            i = j
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not re.match(r"^(#|\||!\[|>|- )",
                                                                     lines[j].strip()):
                j += 1
            out.append(f"<p>{_inline(' '.join(x.strip() for x in lines[i:max(j, i + 1)]))}</p>")
            i = max(j, i + 1)
    return "\n".join(out)


def _gallery(folder: Path, heading: str, multiclass: bool = False) -> str:
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        return ""
    figs = "".join(f"<figure>{_img_tag(p, p.stem)}<figcaption>{html.escape(p.stem)}</figcaption>"
                   "</figure>" for p in pngs[:MAX_GRADCAM])
    more = (f"<p>{len(pngs) - MAX_GRADCAM} more overlays in <code>{html.escape(str(folder))}"
            "</code>.</p>" if len(pngs) > MAX_GRADCAM else "")
    whose = "the class named in each title" if multiclass else "the positive class"
    return (f"<h2>{html.escape(heading)}</h2><p>Grad-CAM: where the evidence for {whose} "
            "lies (red = strongest), on the preprocessed scan the model saw.</p>"
            f'<div class="gallery">{figs}</div>{more}')


def _predictions_html(rows: list[dict], summary: dict | None) -> str:
    parts = ["<h2>Predictions</h2>"]
    if summary:
        info = summary.get("threshold_info", {})
        op = (f", sensitivity {info['sensitivity']:.3f} / specificity {info['specificity']:.3f} "
              "there" if "sensitivity" in info else "")
        parts.append(f"<p>Model <code>{html.escape(summary['model_id'])}</code> "
                     f"({html.escape(summary['backbone'])}); threshold "
                     f"{summary['threshold']:.4g} ({html.escape(info.get('source', ''))}{op}). "
                     f"{summary['n_predicted']} of {summary['n_files']} files predicted, "
                     f"{summary['n_positive']} at or above the threshold.</p>")
        if summary.get("synthetic_training_data"):
            parts.append("<blockquote><p><strong>This model was trained on SYNTHETIC phantoms"
                         "</strong>: not a clinical model.</p></blockquote>")
    typed = any(r.get("predicted_class") for r in rows)
    cols = ("file", *(("predicted_class",) if typed else ()), "p_tumour", "decision", "status",
            "note")
    body = "".join(
        f'<tr class="{html.escape(r["status"])}">' + "".join(
            f"<td>{html.escape(Path(str(r[c])).name if c == 'file' else str(r.get(c, '')))}</td>"
            for c in cols) + "</tr>" for r in rows[:MAX_PRED_ROWS])
    parts.append('<table class="predictions"><thead><tr>' + "".join(f"<th>{c}</th>" for c in cols)
                 + f"</tr></thead><tbody>{body}</tbody></table>")
    if len(rows) > MAX_PRED_ROWS:
        parts.append(f"<p>{len(rows) - MAX_PRED_ROWS} more rows in the CSV.</p>")
    return "\n".join(parts)


def write_html_report(workdir, *, title: str | None = None, predictions: list[dict] | None = None,
                      summary: dict | None = None) -> Path:
    """W/report.html from W/report.md (if any), prediction rows, and the Grad-CAM overlays
    already written in W/gradcam and W/gradcam_examples (pipelines write them; this only
    renders). Never fetches anything: one file to send or archive."""
    workdir = Path(workdir)
    md = workdir / "report.md"
    body, md_title = [], None
    if io.exists(md):
        text = io.read_text(md)
        m = re.match(r"^# (.*)$", text.splitlines()[0]) if text else None
        md_title = m.group(1) if m else None
        body.append(markdown_to_html(text, workdir))
    if predictions is not None:
        body.append(_predictions_html(predictions, summary))
    card = workdir / "model.json"
    typed = (len(io.read_json(card).get("classes", ())) > 2 if io.exists(card) else
             any(r.get("predicted_class") for r in predictions or ()))
    for folder, heading in ((workdir / "gradcam", "Grad-CAM overlays"),
                            (workdir / "gradcam_examples", "Grad-CAM examples (test split)")):
        body.append(_gallery(folder, heading, typed))
    title = title or md_title or f"bt_jax report: {workdir.name}"
    if md_title is None or title != md_title:
        body.insert(0, f"<h1>{html.escape(title)}</h1>")
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
           + "\n".join(b for b in body if b) + "\n</body></html>\n")
    return io.write_text(workdir / "report.html", doc)
