"""Every documented option value runs end to end (quick sizes, as users launch them).

The cases are generated from the schema's allowed values: `augment.balance` (every value
of BALANCE), {2 classes, 4 classes}, the training pipelines {search, train, staged} and
method A's fine-tuning off (`finetune.epochs=0`, frozen-only) or on, so a new value
joins by itself. They cover every pair of values of any two of these options (an
all-pairs design, checked below): every balance value with each class count and each
pipeline, each class count with each pipeline and with fine-tuning on and off. The full
product would take twice the runs for the same pairs. The default suite runs the
combination that crashed method A (no augmented copies); the rest are e2e.
"""

import itertools
import json
from pathlib import Path

import pytest
from helpers import run_launch

from bt_jax.config import BALANCE

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {2: ("configs/quickstart.py:quick", ()),
           4: ("configs/multiclass_search.py:quick", ())}
STAGED = "configs/vgg19_staged.py:quick"
PIPELINES = ("search", "train", "staged")
MULTIPLIERS = {2: {"no": 2, "yes": 3},
               4: {"glioma": 2, "meningioma": 2, "no_tumour": 1, "pituitary": 3}}


def _with_multipliers(config: str, mult: dict, tmp_path) -> str:
    """A config file on top of `config` with these multipliers (keys are class names, so
    they cannot be added from the command line)."""
    path, _, arg = config.partition(":")
    module = Path(path).stem
    f = tmp_path / f"mult_{module}.py"
    f.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport ml_collections\n"
                 f"from configs import {module}\n\n\ndef get_config(arg=''):\n"
                 f"    c = {module}.get_config(arg)\n"
                 f"    c.augment.multipliers = ml_collections.ConfigDict({mult!r})\n"
                 "    return c\n")
    return f"{f}:{arg}"


def _covers_all_pairs(cases) -> bool:
    values = [BALANCE, tuple(CLASSES), PIPELINES, (0, 1)]
    for i, j in itertools.combinations(range(4), 2):
        got = {(c[i], c[j]) for c in cases if None not in (c[i], c[j])}
        want = {(x, y) for x in values[i] for y in values[j]
                if not (j == 3 and "staged" in (x,))}  # staged has no finetune key
        if got != want:
            return False
    return True


def _pairwise():
    """(balance, classes, pipeline, finetune) runs covering every pair of option values:
    balance x pipeline in full; the first assignment of class counts and fine-tuning (in
    a fixed order) that covers every other pair."""
    grid = list(itertools.product(BALANCE, PIPELINES))
    method_a = [i for i, (_, p) in enumerate(grid) if p != "staged"]
    for n_cls in itertools.product(tuple(CLASSES), repeat=len(grid)):
        for ft in itertools.product((0, 1), repeat=len(method_a)):
            fts = dict(zip(method_a, ft))
            cases = [(b, n_cls[i], p, fts.get(i)) for i, (b, p) in enumerate(grid)]
            if _covers_all_pairs(cases) and ("none", 2, "search", 0) in cases:
                return cases
    raise AssertionError("no all-pairs assignment")


def _cases():
    for balance, n_cls, pipeline, finetune in _pairwise():
        default = (balance == "none" and n_cls == 2 and pipeline == "search")
        marks = () if default else (pytest.mark.e2e,)
        yield pytest.param(balance, n_cls, pipeline, finetune, marks=marks,
                           id=f"{balance}-{n_cls}cls-{pipeline}-ft{finetune}")


def test_cases_cover_every_pair_of_option_values():
    cases = _pairwise()
    assert _covers_all_pairs(cases) and len(cases) == len(BALANCE) * len(PIPELINES)
    assert not _covers_all_pairs(cases[1:])  # the check can fail: one case fewer misses a pair
    assert ("none", 2, "search", 0) in cases  # the crash of issue #25, in the default suite


def _run(balance, n_cls, pipeline, finetune, workdir):
    """launch.py on this case's config and flags, to its end."""
    base, _ = CLASSES[n_cls]
    args = ["--config.weights.random_init=True", f"--config.augment.balance={balance}",
            "--config.eval.bootstrap=50", "--config.eval.cv_repeats=1"]
    if pipeline == "staged":  # method B's config, with the class layout of this case
        args += [f"--config.data.phantoms.n_per_class={12 if n_cls == 4 else 16}"]
        if n_cls == 4:
            args += ["--config.data.classes=glioma,meningioma,no_tumour,pituitary",
                     "--config.data.positive=", "--config.data.negative_classes=no_tumour"]
        config = STAGED
    else:
        args += [f"--config.pipeline={pipeline}", f"--config.finetune.epochs={finetune}"]
        config = base
    config = f"{ROOT}/{config}"
    if balance == "multipliers":
        config = _with_multipliers(config, MULTIPLIERS[n_cls], workdir.parent)
    return run_launch(*args, config=config, workdir=workdir, timeout=1200)


@pytest.mark.parametrize("balance,n_cls,pipeline,finetune", list(_cases()))
def test_option_runs_end_to_end(balance, n_cls, pipeline, finetune, tmp_path):
    r = _run(balance, n_cls, pipeline, finetune, tmp_path / "w")
    assert r.returncode == 0, r.stderr[-4000:]
    tmp_path = tmp_path / "w"
    m = json.loads((tmp_path / "metrics.json").read_text())
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert len(man["classes"]) == n_cls
    if pipeline == "staged":
        assert (tmp_path / "report.md").exists()
        return
    acc = m["final"]["accuracy"]["value"]
    assert 0 <= acc <= 1 and (tmp_path / "model.json").exists()
    report = (tmp_path / "report.md").read_text()
    assert m["frozen_vs_finetuned"]["frozen_only"] is (finetune == 0)
    if finetune == 0:
        assert "no fine-tuning" in report and "`finetune.epochs=0`" in report
        # the final model is the head on frozen features: the same test numbers
        assert m["final"]["accuracy"]["value"] == m["head_only"]["accuracy"]["value"]
    else:
        assert "Fine-tuning" in report and "no fine-tuning" not in report
    copies = [ln for ln in r.stderr.splitlines() if "augmented copies:" in ln]
    assert copies and (("augmented copies: 0 " in copies[-1]) is (balance == "none")), copies
