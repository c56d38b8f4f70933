"""Checks of what the metric reports are given: labels, probabilities, class names and
options, each error naming the argument, what was expected and what came.

    y, p = check_inputs(y_true, prob)                               # binary: P(label 1)
    y, p = check_inputs(y_true, probs, "probs", n_classes=4)        # (N, 4) softmax rows
"""

from __future__ import annotations

import numpy as np

_ROW_SUM_TOL = 1e-4  # float32 softmax rows sum to 1 within ~1e-6; logits miss by far more


def check_inputs(y_true, prob, prob_name: str = "prob",
                 n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts to (int64 labels, float64 probabilities in [0, 1]); errors name
    the argument (`prob_name` for the probabilities). n_classes None: two classes, labels 0/1
    and `prob` = P(label 1), shape (N,); n_classes C: labels in [0, C) and `prob` (N, C)
    rows that sum to 1."""
    y, p = np.asarray(y_true), np.asarray(prob)
    C = n_classes or 2
    if y.ndim != 1:
        raise ValueError(f"y_true: expected a 1-D array of labels, got shape {y.shape}")
    _check_shape(p, prob_name, n_classes)
    if len(y) != len(p):
        raise ValueError(f"y_true and {prob_name}: lengths differ ({len(y)} vs {len(p)})")
    if len(y) == 0:
        raise ValueError("y_true: empty, nothing to evaluate")
    if y.dtype.kind not in "biuf":
        wanted = "numeric labels 0/1" if n_classes is None else f"integer labels in [0, {C})"
        raise ValueError(f"y_true: expected {wanted}, got dtype {y.dtype}")
    bad = ~np.isin(y, np.arange(C))
    if bad.any():
        labels = "0 or 1" if n_classes is None else f"integers in [0, {C})"
        raise ValueError(f"y_true: labels must be {labels}, got {np.unique(y[bad])[:5].tolist()}")
    if p.dtype.kind not in "biuf":
        raise ValueError(f"{prob_name}: expected floats in [0, 1], got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        bad = int((~np.isfinite(p)).sum())
        raise ValueError(f"{prob_name}: {bad} value(s) are NaN or infinite")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"{prob_name}: values must lie in [0, 1], got range "
                         f"[{p.min():g}, {p.max():g}] (pass {'softmax ' if n_classes else ''}"
                         "probabilities, not logits)")
    err = np.abs(p.sum(axis=1) - 1.0) if n_classes else None
    if err is not None and err.max() > _ROW_SUM_TOL:
        i = int(err.argmax())
        raise ValueError(f"{prob_name}: each row must sum to 1, row {i} sums to {p[i].sum():g} "
                         "(pass softmax probabilities, not sigmoid outputs or logits)")
    return y.astype(np.int64), p


def _check_shape(p: np.ndarray, prob_name: str, n_classes: int | None) -> None:
    if n_classes is None and p.ndim != 1:
        hint = (f" (for softmax outputs pass {prob_name}[:, 1])"
                if p.ndim == 2 and p.shape[-1] == 2 else "")
        raise ValueError(f"{prob_name}: expected a 1-D array of P(label 1), "
                         f"got shape {p.shape}{hint}")
    if n_classes is not None and (p.ndim != 2 or p.shape[1] != n_classes):
        hint = (" (for a binary P(label 1) use metrics.classification_report)"
                if p.ndim == 1 else "")
        raise ValueError(f"{prob_name}: expected shape (N, {n_classes}), one column per class, "
                         f"got {p.shape}{hint}")


def check_class_names(class_names, *, two: bool = False) -> tuple[str, ...]:
    """The names as strings, all distinct: exactly two (two=True) or at least two."""
    names = tuple(str(c) for c in class_names)
    if len(names) < 2 or (two and len(names) != 2) or len(set(names)) != len(names):
        raise ValueError(f"class_names: expected {'two' if two else 'at least two'} distinct "
                         f"names, got {tuple(class_names)}")
    return names


def check_options(n_boot, ci: float, *, min_boot: int = 0) -> None:
    """n_boot an integer >= min_boot, ci a level in (0, 1); errors name the option."""
    if int(n_boot) != n_boot or n_boot < min_boot:
        wanted = f"an integer >= {min_boot}" if min_boot else "a non-negative integer"
        raise ValueError(f"n_boot: expected {wanted}, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci: expected a level in (0, 1), e.g. 0.95, got {ci}")
