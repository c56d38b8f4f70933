"""The Keras baseline of method A's head search: one `keras.Model.fit` per fold.

    from keras_head import keras_cv
    acc, seconds = keras_cv(features, labels, folds, hp, seed=0)

What a Keras notebook does for one trial (Keras 3, JAX backend; bench-only, bt_jax never
imports Keras): build GAP-features -> Dense(units, relu) -> Dropout -> Dense(1, sigmoid)
(Dense(C, softmax) for C > 2), compile with Adam (eps 1e-7) or SGD with momentum, then
per fold `fit` with validation data and `EarlyStopping(monitor="val_loss", patience,
restore_best_weights=True)`; the trial's value is the mean validation accuracy at the
restored weights. Every fold builds and fits a new model, as the notebooks do; or
(reuse=True) one model per trial is reset before each fold, which saves the retracing.
The backend is KERAS_BACKEND's (default here: jax); bench_search.py --keras-backend.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")


def _model(keras, dim: int, hp, n_classes: int):
    out = (keras.layers.Dense(1, activation="sigmoid") if n_classes == 2
           else keras.layers.Dense(n_classes, activation="softmax"))
    model = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(hp.units, "relu"),
                              keras.layers.Dropout(hp.dropout), out])
    opt = (keras.optimizers.Adam(hp.lr, epsilon=1e-7) if hp.optimizer == "adam"
           else keras.optimizers.SGD(hp.lr, momentum=hp.momentum))
    loss = "binary_crossentropy" if n_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
    return model


def _snapshot(model):
    """Initial weights and optimizer variables (step count, learning rate, moments)."""
    return model.get_weights(), [v.numpy() for v in model.optimizer.variables]


def _reset(model, snapshot) -> None:
    weights, opt = snapshot
    model.set_weights(weights)
    for v, value in zip(model.optimizer.variables, opt, strict=True):
        v.assign(value)


def keras_cv(features, labels, folds, hp, *, seed: int = 0, n_classes: int = 2,
             reuse: bool = False):
    """(mean validation accuracy over folds, wall seconds) of one trial, fold by fold.
    reuse=False: a new model per fold, as the notebooks do; True: one model per trial,
    its initial weights and optimizer state restored before each fold (no retracing),
    what a careful Keras user writes."""
    import keras
    import numpy as np
    t0 = time.perf_counter()
    accs, model, init = [], None, None
    for f in range(folds.k):
        tr = np.asarray(folds.train_idx[f])[np.asarray(folds.train_mask[f])]
        va = np.asarray(folds.val_idx[f])[np.asarray(folds.val_mask[f])]
        keras.utils.set_random_seed(seed + f)
        if reuse and model is not None:
            _reset(model, init)
        else:
            model = _model(keras, features.shape[1], hp, n_classes)
            model.optimizer.build(model.trainable_variables)
            init = _snapshot(model)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience,
                                             restore_best_weights=True)
        model.fit(features[tr], labels[tr], batch_size=hp.batch_size, epochs=hp.epochs,
                  validation_data=(features[va], labels[va]), callbacks=[stop], verbose=0,
                  shuffle=True)
        accs.append(model.evaluate(features[va], labels[va], verbose=0)[1])
    return float(np.mean(accs)), time.perf_counter() - t0
