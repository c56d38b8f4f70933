"""Pipeline `search` (method A): features once, k-fold head search, final fine-tune, test.

    python launch.py --config=configs/resnet_search.py --workdir=W

1. weights: every backbone in config.search.backbones whose weights resolve (clear error
   before any work if none does); 2. data set, manifest, splits; 3. augmented copies of
   training images (augment2a planned per fold, made once); 4. features of originals and
   copies per backbone, cached; 5. Optuna search, each trial one vmapped k-fold run;
   6. best trial: head on frozen features, then end-to-end fine-tune;
   7. one evaluation on the held-out test split (+ top-k ensemble), report and plots.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from bt_jax import compilation, stages, tuning
from bt_jax.reporting import tensorboard
from bt_jax.train import head
from bt_jax.method_a import ensemble, estimates, nested, report_sections, steps

log = logging.getLogger(__name__)


def run(config, workdir: Path):
    run = steps.prepare(config, workdir, config.search.backbones)
    with compilation.Tally() as tally, stages.stage("search"):
        study = steps.run_study(run, config, run.workdir)
    tensorboard.write_trials(config, run.workdir, "search", study.get_trials(deepcopy=False))
    compiled = tally.summary()
    log.info("search: %d XLA programs (%d compiled, %d from the cache), %.1f s compiling",
             compiled["programs"], compiled["compiled"], compiled["cache_hits"],
             compiled["seconds"])
    best = tuning.best_trial_params(study)
    log.info("best trial: %s", best)
    run = run.at(best["backbone"])   # from here on, images at the chosen backbone's size
    final = steps.finish(run, best["backbone"], head.HeadHParams.from_trial(best, config.train))
    test_sections, metrics, _ = report_sections.evaluate_test(run, final)
    data, *training = report_sections.training_sections(run, final)
    sections = [data, ("Search", _search_text(study, best, compiled), []), *training,
                *test_sections]
    if config.eval.cv_repeats:
        metrics["cv"] = estimates.repeated_cv(run, best["backbone"], final.hp,
                                              config.eval.cv_repeats)
        tensorboard.write_cv_repeats(config, run.workdir, "cv_repeats", metrics["cv"])
        sections.insert(2, estimates.cv_section(metrics["cv"]))  # after Data, Search
    if config.search.nested:
        metrics["nested_cv"] = nested.nested_cv(run, study)
        sections.insert(3 if config.eval.cv_repeats else 2, nested.nested_section(metrics["nested_cv"]))
    if config.eval.ensemble_k and run.ds.multiclass:
        log.info("top-k ensemble: compared for two classes only; left out for %d classes",
                 len(run.ds.classes))
    elif config.eval.ensemble_k:
        s_ens, metrics["ensemble"] = ensemble.run_ensemble(run, study)
        sections.append(s_ens)
    metrics.update(best_trial=best, backbone=best["backbone"], synthetic=run.ds.synthetic,
                   n_test=int(len(run.ds.splits.test)), operating_point=final.operating_point)
    return report_sections.write_run_outputs(run, final, metrics, sections,
                                             title=f"bt_jax method A: {best['backbone']}")


def _search_text(study, best, compiled: dict) -> str:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    return (f"{len(done)} completed trials ({len(failed)} failed). Best mean "
            f"k-fold validation accuracy {study.best_value:.3f} with "
            + ", ".join(f"{k}={v}" for k, v in best.items()) + ". All trials: `trials.csv`. "
            f"This launch's search used {compiled['programs']} XLA programs "
            f"({compiled['compiled']} compiled, {compiled['cache_hits']} loaded from the "
            f"compilation cache), {compiled['seconds']:.1f} s.")
