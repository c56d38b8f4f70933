"""The self-contained HTML report: built from report.md with every figure inlined, and it
renders in headless Chromium (skipped with a message where Chromium is absent)."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from bt_jax.reporting import html, metrics, plots, report


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(30)].astype(int)
    p = np.clip(y * 0.4 + rng.random(60) * 0.6, 0, 1)
    r = metrics.classification_report(y, p, n_boot=100)
    img = plots.plot_roc(y, p, tmp_path / "eval" / "roc file.png", "ROC")
    report.write_markdown_report(tmp_path / "report.md", title="Run <1>", sections=[
        ("Data", "60 images, **synthetic**; see `manifest.json`.\n\n- one\n- two", []),
        report.evaluation_section(r, [img], heading="Test split")])
    (tmp_path / "gradcam").mkdir()
    shutil.copy(img, tmp_path / "gradcam" / "scan1.png")
    return tmp_path


def test_html_is_self_contained(run_dir):
    path = html.write_html_report(run_dir)
    doc = path.read_text()
    assert doc.startswith("<!DOCTYPE html>") and "<title>Run &lt;1&gt;</title>" in doc
    assert '<table class="metrics">' in doc and "<th>Metric</th>" in doc
    assert "<strong>synthetic</strong>" in doc and "<li>one</li>" in doc
    assert "<blockquote>" in doc                      # the small-test-set note
    srcs = re.findall(r'src="([^"]+)"', doc)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', doc)   # nothing fetched when opened
    assert "Grad-CAM overlays" in doc


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_renders_in_headless_chromium(run_dir):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed (apt-get install -y chromium): HTML render not checked")
    path = html.write_html_report(run_dir)
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                        path.as_uri()], capture_output=True, text=True, timeout=120)
    dom = r.stdout
    assert '<table class="metrics">' in dom, r.stderr[-2000:]
    assert "Accuracy" in dom and "ROC AUC" in dom
    assert dom.count("data:image/png;base64,") == 2
