"""Method A's hyper-parameter search: an Optuna study shared by any number of workers.

    from bt_jax import tuning
    study = tuning.run_search(config, W, objective, available_backbones=["resnet50v2"])
    tuning.best_trial_params(study); tuning.top_trials(study, 5)

space.py: the search space; study.py: the trial loop, trials.csv; pruning.py: stopping poor trials early;
storage.py: RDB URL, cross-process locks, worker ids and the reaping of trials left by
dead workers.
"""

from bt_jax.tuning.storage import SearchError, storage_url, study_name  # noqa: F401
from bt_jax.tuning.study import (best_trial_params, params_to_config, run_search,  # noqa: F401
                                 search_space, seed_params, suggest, top_trials,
                                 trials_dataframe_csv)
