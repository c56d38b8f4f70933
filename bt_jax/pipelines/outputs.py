"""The last step of every training pipeline: metrics.json, report.md, examples, report.html.

    write_run_outputs(run, final, metrics, sections, title="bt_jax method A: resnet50v2")
"""

from __future__ import annotations

import logging

from bt_jax import inference, stages
from bt_jax.pipelines import method_a_report
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
        inference.write_test_examples(workdir, GRADCAM_EXAMPLES)
    except Exception as e:  # noqa: BLE001 - a report without examples beats no report
        log.warning("Grad-CAM examples left out of the report: %s", e)
    html.write_html_report(workdir)


def write_run_outputs(run, final, metrics: dict, sections: list, *, title: str) -> dict:
    """Method A's outputs; prints the headline with its interval."""
    metrics["frozen_vs_finetuned"] = method_a_report.frozen_vs_finetuned(final)
    write_reports(run.workdir, metrics, sections, title=title, synthetic=run.ds.synthetic)
    acc = metrics["final"]["accuracy"]
    print(f"test accuracy {acc['value']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}] on "
          f"{len(run.ds.splits.test)} images; report: {run.workdir / 'report.md'}")
    return metrics
