"""Stratified bootstrap resamples as case weights: each resample is a row of multiplicities,
so every metric over all resamples is one matrix product away (metrics.py).

    w = bootstrap_weights(y_true, n_boot=1000, seed=0)   # (B, N), rows sum to N
"""

from __future__ import annotations

import numpy as np

MAX_BOOT_CELLS = 20_000_000  # resamples x cases held at once: 160 MB of float64 weights


def boot_count(n_boot: int, n: int) -> int:
    """Resamples used for n cases: n_boot, or fewer (never under 200) where n_boot x n would
    pass MAX_BOOT_CELLS (100,000 scans: 200), so memory does not grow with N; at that size
    the interval is already narrow."""
    return int(min(n_boot, max(200, MAX_BOOT_CELLS // max(n, 1))))


def bootstrap_weights(y_true: np.ndarray, n_boot: int, seed: int,
                      n_total: int | None = None) -> np.ndarray:
    """(B, n) multiplicity of each case in each resample, cases resampled within each true
    class (rows sum to n); B = boot_count(n_boot, n_total or n). Classes 0 and 1 draw from
    `seed`'s stream, each further class c from its own (seed, c) stream: a two-class problem
    gets the same resamples whichever report scores it."""
    y = np.asarray(y_true)
    n_boot = boot_count(n_boot, len(y) if n_total is None else n_total)
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, len(y)), dtype=np.float64)
    for c in range(max(2, int(y.max()) + 1 if len(y) else 0)):
        idx = np.flatnonzero(y == c)
        if len(idx):
            draw = rng if c < 2 else np.random.default_rng(
                int(np.random.SeedSequence([seed, c]).generate_state(1)[0]))
            w[:, idx] = draw.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)),
                                         size=n_boot)
    return w
