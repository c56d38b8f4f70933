"""Kill-anywhere resume: a run SIGKILLed at any point and relaunched with the same workdir
ends exactly as an uninterrupted run of the same seed (metrics, trials, model card)."""

from pathlib import Path

import pytest
from conftest import QUICK_SEARCH
from helpers import launch, outcome

ROOT = Path(__file__).resolve().parents[1]
SEARCH = [f"--config={ROOT}/{QUICK_SEARCH[0]}", *QUICK_SEARCH[1:]]
STAGED = [f"--config={ROOT}/configs/vgg19_staged.py:quick"]

# (log line that marks the point, what is running when the kill lands)
SEARCH_POINTS = {
    "preprocess": "pipeline search ->",                 # weights, discovery, preprocessing
    "features": "augmented copies:",                     # copies and feature extraction
    "search": "trial 1 ",                               # between/during trials
    "finetune": "fine-tune: starting point",            # inside the fine-tuning epoch
    "reports": "writing metrics and reports",           # while reports are written
}


@pytest.fixture
def reference(quick_search_run):
    """The uninterrupted run (conftest: shared with test_search_pipeline)."""
    return outcome(quick_search_run[0])


def _killed_then_resumed(tmp_path, args, point):
    assert launch(tmp_path, args, kill_at=point).rc == -9
    launch(tmp_path, args)
    return outcome(tmp_path)


@pytest.mark.e2e
def test_search_killed_during_a_trial_resumes_to_the_same_result(reference, tmp_path):
    got = _killed_then_resumed(tmp_path, SEARCH, SEARCH_POINTS["search"])
    assert got == reference


@pytest.mark.slow
@pytest.mark.parametrize("point", ["preprocess", "features", "finetune", "reports"])
def test_search_killed_anywhere_resumes_to_the_same_result(reference, tmp_path, point):
    assert _killed_then_resumed(tmp_path, SEARCH, SEARCH_POINTS[point]) == reference


@pytest.mark.slow
def test_staged_killed_across_a_stage_boundary_resumes_to_the_same_result(tmp_path):
    launch(tmp_path / "a", STAGED)
    # killed inside stage1, after the baseline stage finished
    got = _killed_then_resumed(tmp_path / "b", STAGED, "stage1: starting point")
    assert got == outcome(tmp_path / "a")
