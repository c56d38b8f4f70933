"""The last step of every training pipeline (methods A and B): metrics.json, report.md,
Grad-CAM examples of the test split, report.html.

    write_reports(W, metrics, sections, title="bt_jax method B: vgg19", synthetic=False)
"""

from __future__ import annotations

import logging

from bt_jax import stages
from bt_jax.inference.overlays import write_test_examples
from bt_jax.reporting import html, report

log = logging.getLogger(__name__)
GRADCAM_EXAMPLES = 4   # test-split overlays in report.html


def write_reports(workdir, metrics: dict, sections: list, *, title: str, synthetic: bool) -> None:
    """metrics.json + report.md, then Grad-CAM examples of the test split + report.html."""
    with stages.stage("report"):
        _write_reports(workdir, metrics, sections, title=title, synthetic=synthetic)


def _write_reports(workdir, metrics: dict, sections: list, *, title: str, synthetic: bool) -> None:
    log.info("writing metrics and reports to %s", workdir)
    report.write_metrics_json(workdir / "metrics.json", metrics)
    title += " [SYNTHETIC DATA]" if synthetic else ""
    report.write_markdown_report(workdir / "report.md", title=title, sections=sections)
    try:
        write_test_examples(workdir, GRADCAM_EXAMPLES)
    except Exception as e:  # noqa: BLE001 - a report without examples beats no report
        log.warning("Grad-CAM examples left out of the report: %s", e)
    html.write_html_report(workdir)
