"""Regression metrics (NumPy only): R² and mean squared error."""

from __future__ import annotations

import numpy as np

from userseq.core.errors import UserseqError


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (0 for predicting the mean of `y`,
    negative when worse; 1.0 or 0.0 for a constant `y` predicted exactly or not)."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if y.shape != pred.shape or y.ndim != 1 or len(y) == 0:
        raise UserseqError(f"r2_score needs two equal-length 1-D arrays (got {y.shape} and "
                           f"{pred.shape}).")
    if not (np.isfinite(y).all() and np.isfinite(pred).all()):
        raise UserseqError("r2_score: values must be finite (found NaN or inf).")
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return 1.0 - ss_res / ss_tot


def mse(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared error."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return float(((y - pred) ** 2).mean())
