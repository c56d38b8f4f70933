"""Method A's top-k ensemble: the k best search trials' heads, test probabilities averaged.

    ens = ensemble.ensemble_topk(study, feats, labels_all, train_rows, val_rows, test_idx,
                                 k=config.eval.ensemble_k, config=config, seed=config.seed + 1)
    section, rep = ensemble.evaluate_ensemble(ens, y_test, out_dir=W / "eval" / "ensemble",
                                              class_names=("no", "yes"), config=config,
                                              synthetic=False)

Each member is one COMPLETE trial (best first, `tuning.top_trials`), trained like the final
head: `head.fit_one` on frozen features of its own backbone, fold-0 training rows (incl.
augmented copies), early stopping on fold-0 validation rows, `config.train` epochs/patience,
PRNGKey(seed + i) for member i. Member 0 is the single best trial, so the ensemble is compared
with it on the same test cases (`metrics.paired_difference`, ensemble minus single best): the
only difference between the two is the averaging, not the training recipe. With the pipeline's
seed (config.seed + 1) member 0 reproduces the pipeline's "head only" model exactly.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import numpy as np
import optuna

from bt_jax import tuning
from bt_jax.config import training_threshold
from bt_jax.method_a import steps
from bt_jax.reporting import evaluation, metrics
from bt_jax.train import head

# Deltas the report shows; accuracy is the headline (it is the search objective).
COMPARED = ("accuracy", "roc_auc", "sensitivity", "specificity")
_LABELS = {"accuracy": "accuracy", "roc_auc": "ROC AUC", "sensitivity": "sensitivity",
           "specificity": "specificity"}


@dataclasses.dataclass
class Member:
    """One ensembled trial: its search result, its head's validation fit and test probabilities."""
    trial: int
    value: float            # mean k-fold validation accuracy in the search
    params: dict
    seed: int
    val_loss: float         # fold-0 validation, at the restored best epoch
    val_acc: float
    best_epoch: int
    test_prob: np.ndarray   # (n_test,) P(label 1)

    def summary(self) -> dict:
        return {"trial": self.trial, "search_value": self.value, "params": dict(self.params),
                "seed": self.seed, "val_loss": self.val_loss, "val_acc": self.val_acc,
                "best_epoch": self.best_epoch}


@dataclasses.dataclass
class EnsembleResult:
    members: list[Member]      # best trial first
    prob: np.ndarray           # (n_test,) mean of the members' test probabilities
    k_requested: int
    n_complete: int            # COMPLETE trials in the study
    notes: list[str]

    @property
    def single_prob(self) -> np.ndarray:
        """The single best trial's head (member 0), the ensemble's reference."""
        return self.members[0].test_prob


def run_ensemble(run, study: optuna.Study) -> tuple[tuple, dict]:
    """The search pipeline's step: top-k ensemble on the test split, compared with the best
    trial. Member 0 reuses the final head's seed: it is the head-only model."""
    c, ds = run.config, run.ds
    train_rows = run.folds.train_idx[0][run.folds.train_mask[0]]
    ens = ensemble_topk(study, run.feats, run.labels_all, train_rows, ds.splits.fold_val(0),
                        ds.splits.test, k=c.eval.ensemble_k, config=c, seed=c.seed + 1,
                        fit=lambda name, hp, key: steps.fold0_head(run, name, hp, key))
    return evaluate_ensemble(ens, ds.labels[ds.splits.test], out_dir=run.workdir / "eval" / "ensemble",
                             class_names=ds.label_names, config=c, synthetic=ds.synthetic)


def ensemble_topk(study: optuna.Study, feats: dict, labels_all, train_rows, val_rows, test_idx, *,
                  k: int, config, seed: int, fit=None) -> EnsembleResult:
    """Trains the top-k trials' heads on frozen features and averages their test probabilities.

    feats: {backbone: (N, D) features of originals then copies}, labels_all: (N,) labels;
    train_rows/val_rows/test_idx index those rows. k > completed trials uses them all (noted).
    fit(backbone, hp, key) -> FoldResults: how a member is trained on those rows (default
    `head.fit_one`; the pipeline's reuses the search's compiled program).
    """
    if int(k) < 1:
        raise ValueError(f"k: expected >= 1 trials to ensemble, got {k} "
                         "(config.eval.ensemble_k = 0 means: do not call ensemble_topk)")
    n_complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    trials = tuning.top_trials(study, int(k))
    notes = []
    if n_complete < k:
        notes.append(f"{k} trials were requested but the study has only {n_complete} completed "
                     f"trial{'s' if n_complete != 1 else ''}: all of them are ensembled.")
    test_idx = np.asarray(test_idx)
    members = []
    for i, t in enumerate(trials):
        name = t.params.get("backbone")
        if name not in feats:
            if i == 0:
                raise KeyError(f"best trial {t.number}: no features for backbone {name!r} "
                               f"(have {sorted(feats)})")
            # a resumed study may hold trials of a backbone whose weights no longer resolve
            notes.append(f"trial {t.number} left out: no features for backbone {name!r}.")
            continue
        hp = head.HeadHParams.from_trial(t.params, config.train)
        key = jax.random.PRNGKey(seed + i)
        res = (fit(name, hp, key) if fit is not None else
               head.fit_one(feats[name], labels_all, train_rows, val_rows, hp, key))
        prob = np.asarray(head.predict_proba(res.params, feats[name][test_idx]), np.float64)
        members.append(Member(trial=int(t.number), value=float(t.value), params=dict(t.params),
                              seed=int(seed + i), val_loss=float(res.val_loss_best),
                              val_acc=float(res.val_acc_best), best_epoch=int(res.best_epoch),
                              test_prob=prob))
    prob = np.mean(np.stack([m.test_prob for m in members]), axis=0)
    return EnsembleResult(members, prob, int(k), n_complete, notes)


def compare(y_true, prob_single, prob_ensemble, *, config) -> dict:
    """Ensemble minus single best on the same cases: {metric: {"a", "b", "diff", "ci"}}.

    Paired bootstrap CIs (config.eval.bootstrap resamples, seed config.seed); with fewer than
    2 resamples only the point differences, CIs [nan, nan].
    """
    n_boot = int(config.eval.bootstrap)
    thr = training_threshold(config.threshold)
    if n_boot >= 2:
        return metrics.paired_difference(y_true, prob_single, prob_ensemble, threshold=thr,
                                         n_boot=n_boot, ci=float(config.eval.ci),
                                         seed=int(config.seed))
    ra, rb = (metrics.classification_report(y_true, p, threshold=thr, n_boot=0)
              for p in (prob_single, prob_ensemble))
    out = {key: {"a": ra[key]["value"], "b": rb[key]["value"],
                 "diff": rb[key]["value"] - ra[key]["value"], "ci": [math.nan, math.nan]}
           for key in metrics.SCALAR_METRICS}
    return {"n": int(len(np.asarray(y_true))), "threshold": thr, "n_boot": n_boot,
            "ci_level": float(config.eval.ci), "metrics": out}


def verdict(diff: dict, n: int, k_used: int) -> tuple[str, bool, bool]:
    """(sentence, beats, distinguishable) for the accuracy difference ensemble - single best."""
    acc = diff["metrics"]["accuracy"]
    d, (lo, hi) = acc["diff"], acc["ci"]
    beats = bool(d > 0)
    known = math.isfinite(lo) and math.isfinite(hi)
    dist = bool(known and (lo > 0 or hi < 0))
    ci = f" [{_num(lo)}, {_num(hi)}]" if known else " (no CI: eval.bootstrap < 2)"
    if d > 0:
        head_ = f"The ensemble's test accuracy is {abs(d):.3f} higher{ci}"
    elif d < 0:
        head_ = f"The ensemble's test accuracy is {abs(d):.3f} lower{ci}"
    else:
        head_ = f"The ensemble's test accuracy equals the single best trial's ({acc['a']:.3f}){ci}"
    if not known:
        tail = "whether this is more than chance cannot be said without resamples"
    elif dist:
        tail = (f"the ensemble {'beats' if lo > 0 else 'is worse than'} the single best trial, "
                f"and the {100 * diff['ci_level']:.0f}% CI excludes 0")
    else:
        tail = ("not distinguishable from the single best trial" if d != 0 else
                "no difference")
    members = f"{k_used} member{'s' if k_used != 1 else ''}"
    return f"{head_}: {tail} on {n} test images ({members}).", beats, dist


def _num(x: float) -> str:
    return f"{x:.3f}".replace("-", "−")


def evaluate_ensemble(ens: EnsembleResult, y_true, *, out_dir: Path, class_names, config,
                      synthetic: bool) -> tuple[tuple, dict]:
    """The ensemble's test evaluation (same table/plots as every result) plus the paired
    comparison with the single best trial; returns (report section, metrics.json entry)."""
    y_true = np.asarray(y_true).astype(int)
    section, rep = evaluation.evaluate_split(
        y_true, ens.prob, out_dir=out_dir, title=f"Test split, top-{len(ens.members)} ensemble",
        class_names=class_names, config=config, synthetic=synthetic)
    diff = compare(y_true, ens.single_prob, ens.prob, config=config)
    sentence, beats, dist = verdict(diff, len(y_true), len(ens.members))
    heading, body, images = section
    body = "\n".join([_intro(ens), "", f"**{sentence}**", "", _delta_table(diff), "",
                      _member_table(ens), "", body])
    entry = {"k_requested": ens.k_requested, "k_used": len(ens.members),
             "n_complete_trials": ens.n_complete, "notes": list(ens.notes),
             "members": [m.summary() for m in ens.members], "test": rep,
             "vs_single_best": diff, "beats_single_best": beats,
             "difference_distinguishable": dist, "verdict": sentence}
    return (heading, body, images), entry


def _intro(ens: EnsembleResult) -> str:
    n = len(ens.members)
    text = (f"Mean of the test probabilities of the {n} best completed search trial"
            f"{'s' if n != 1 else ''}' heads, each trained on frozen features like the final "
            "head (fold-0 training rows with their augmented copies, early stopping on fold-0 "
            "validation). Compared with the single best trial's head (member 0, trained the same "
            "way) on the same test cases: ensemble minus single best, paired bootstrap CIs.")
    return " ".join([text, *ens.notes])


def _delta_table(diff: dict) -> str:
    level = f"{100 * diff['ci_level']:.0f}% CI"
    rows = [f"| Metric | Single best | Ensemble | Difference [{level}] |", "|---|---|---|---|"]
    for key in COMPARED:
        m = diff["metrics"][key]
        lo, hi = m["ci"]
        ci = f" [{_num(lo)}, {_num(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else ""
        rows.append(f"| {_LABELS[key]} | {m['a']:.3f} | {m['b']:.3f} | {_num(m['diff'])}{ci} |")
    return "\n".join(rows)


def _member_table(ens: EnsembleResult) -> str:
    rows = ["| Member | Trial | Backbone | Units | Dropout | lr | Batch | Optimizer | "
            "Search val acc | Fold-0 val loss | Fold-0 val acc |", "|" + "---|" * 11]
    for i, m in enumerate(ens.members):
        p = m.params
        rows.append(f"| {i} | {m.trial} | {p['backbone']} | {p['units']} | {p['dropout']:.2f} | "
                    f"{p['lr']:.2g} | {p['batch_size']} | {p['optimizer']} | {m.value:.3f} | "
                    f"{m.val_loss:.3f} | {m.val_acc:.3f} |")
    return "\n".join(rows)
