"""Method A: frozen-backbone features, a k-fold head search, the final head, fine-tuning.

    from bt_jax.method_a import steps, report_sections, estimates
    run = steps.prepare(config, W, ("efficientnet_lite0",))   # data, copies, folds, features
    final = steps.finish(run, "efficientnet_lite0", hp)        # final head -> fine-tune -> model.json
    sections, metrics, _ = report_sections.evaluate_test(run, final)
    metrics["cv"] = estimates.repeated_cv(run, "efficientnet_lite0", final.hp, repeats=5)

steps.py (prepare, cv heads, the Optuna study, final head, fine-tune), report_sections.py
(the report's sections and written outputs), estimates.py (repeated CV + baseline),
nested.py (nested CV), ensemble.py (top-k trials), allocation.py (which compiled head
programs a search trains in). The `search` and `train` pipelines are a few lines on top.
"""
