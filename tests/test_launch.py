"""End-to-end: launch.py as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _launch(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_prepare_on_phantoms(tmp_path):
    r = _launch(f"--config={ROOT}/configs/quickstart.py:quick", "--config.pipeline=prepare",
                f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SYNTHETIC" in r.stdout and "32 files seen" in r.stdout
    m = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert m["synthetic"] and m["summary"]["used"] == 32
    assert json.loads((tmp_path / "w" / "config.json").read_text())["pipeline"] == "prepare"


@pytest.mark.e2e
def test_prepare_reference_set_with_overrides(tmp_path, real_data_dir):
    r = _launch(f"--config={ROOT}/configs/quickstart.py:quick", "--config.pipeline=prepare",
                f"--config.data.dir={real_data_dir}", "--config.preprocess.equalize=clahe",
                f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "253 files seen, 228 used, 25 exact duplicates in 22 groups" in r.stdout


def _one_line_error(r, expected: str):
    """A user's mistake: exit status 2, `error: ...` naming it, a hint, no traceback."""
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and expected in lines[-2], lines[-3:]
    assert lines[-1].startswith("hint: ") and "Traceback" not in r.stderr


def test_bad_config_value_is_a_clear_error(tmp_path):
    r = _launch(f"--config={ROOT}/configs/quickstart.py:quick", "--config.preprocess.equalize=gamma",
                f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    _one_line_error(r, "config.preprocess.equalize: expected one of")
    r = _launch(f"--config={ROOT}/configs/quickstart.py:quick", "--config.search.units=",
                f"--workdir={tmp_path / 'w'}", "--verbose", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "config.search.units" in r.stderr


def test_missing_data_folder_is_a_clear_error(tmp_path):
    r = _launch(f"--config={ROOT}/configs/quickstart.py:quick",
                f"--config.data.dir={tmp_path / 'nope'}", f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    _one_line_error(r, "does not exist")
