"""Are the probabilities honest? Reliability, expected calibration error, Brier score, and
temperature scaling fitted on validation predictions (never on test).

    cal = calibration_report(y, prob, n_bins=10, n_boot=1000, seed=0)   # ECE, Brier + CIs
    t = fit_temperature(y_val, prob_val)          # T > 1 softens over-confident models
    prob_test_cal = apply_temperature(prob_test, t)

ECE uses equal-width bins of P(positive): sum over bins of (bin size / n) x |observed
fraction of positives - mean predicted probability|. Temperature scaling divides the logit
by T, so it never changes which side of 0.5 a case falls on, only how sure the model says
it is (ranking metrics such as ROC AUC are unchanged).
"""

from __future__ import annotations

import math

import numpy as np

from bt_jax.reporting import metrics

_EPS = 1e-7


def _check(y, prob):
    y = np.asarray(y).astype(int).ravel()
    prob = np.asarray(prob, np.float64).ravel()
    if y.shape != prob.shape or not len(y):
        raise ValueError(f"y and prob must be equal non-empty 1-D arrays, got {y.shape} and "
                         f"{prob.shape}")
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("prob: expected finite probabilities in [0, 1]")
    return y, prob


def reliability_curve(y, prob, n_bins: int = 10) -> dict:
    """Per equal-width bin of P(positive): mean predicted, observed fraction, count."""
    y, prob = _check(y, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(prob, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=prob, minlength=n_bins) / count
        frac = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {"edges": edges, "mean_predicted": mean_p, "observed": frac, "count": count}


def expected_calibration_error(y, prob, n_bins: int = 10) -> float:
    c = reliability_curve(y, prob, n_bins)
    ok = c["count"] > 0
    w = c["count"][ok] / c["count"].sum()
    return float(np.sum(w * np.abs(c["observed"][ok] - c["mean_predicted"][ok])))


def brier_score(y, prob) -> float:
    y, prob = _check(y, prob)
    return float(np.mean((prob - y) ** 2))


def calibration_report(y, prob, *, n_bins: int = 10, n_boot: int = 1000, ci: float = 0.95,
                       seed: int = 0) -> dict:
    """ECE and Brier score with percentile-bootstrap intervals, and the reliability curve."""
    y, prob = _check(y, prob)
    out = {}
    rng = np.random.default_rng(seed)
    n_draws = max(0, metrics.boot_count(n_boot, len(y))) if n_boot else 0
    draws = [rng.integers(0, len(y), len(y)) for _ in range(n_draws)]
    lo, hi = (1 - ci) / 2, 1 - (1 - ci) / 2
    for name, fn in (("ece", lambda a, b: expected_calibration_error(a, b, n_bins)),
                     ("brier", brier_score)):
        boot = [fn(y[d], prob[d]) for d in draws]
        interval = ([float(np.quantile(boot, lo)), float(np.quantile(boot, hi))] if boot
                    else [math.nan, math.nan])
        out[name] = {"value": fn(y, prob), "ci": interval}
    curve = reliability_curve(y, prob, n_bins)
    out["reliability"] = {k: np.asarray(v).tolist() for k, v in curve.items()}
    out.update(n_bins=int(n_bins), n_boot=int(n_boot), ci_level=float(ci), n=int(len(y)))
    return out


def _logit(prob):
    p = np.clip(np.asarray(prob, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(prob, temperature: float) -> np.ndarray:
    """sigmoid(logit(prob) / T)."""
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    return 1.0 / (1.0 + np.exp(-_logit(prob) / float(temperature)))


def _nll(y, z, t):
    s = z / t
    return float(np.mean(np.logaddexp(0.0, s) - y * s))  # binary cross-entropy of sigmoid(s)


def fit_temperature(y, prob, *, bounds=(0.05, 20.0), iters: int = 80) -> float:
    """The T minimising the validation negative log-likelihood of sigmoid(logit / T).

    A golden-section search on log T (the NLL is unimodal in log T for binary labels);
    deterministic, no optimiser state. Fit on validation predictions only."""
    y, prob = _check(y, prob)
    z = _logit(prob)
    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(y, z, math.exp(c)), _nll(y, z, math.exp(d))
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(y, z, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(y, z, math.exp(d))
    return float(math.exp((a + b) / 2))
