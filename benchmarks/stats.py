"""Aggregating seeds: means with 95 % t-intervals, paired and Welch differences, tables."""

from __future__ import annotations

import math
import statistics
from typing import Any

from scipy import stats


def aggregate(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and (sample) standard deviation of every numeric metric over seeds (labels such as
    ``feature_space`` and NaN values are skipped)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if not math.isnan(r[k])]
        out[k] = ((statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
                  if vals else (math.nan, math.nan))
    return out


def mean_ci(vals: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (0 for one value; NaN values skipped)."""
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return m, 0.0
    t = float(stats.t.ppf(0.975, len(vals) - 1))
    return m, t * statistics.stdev(vals) / math.sqrt(len(vals))


def welch_diff(a: list[float], b: list[float]) -> tuple[float, float]:
    """``mean(a) - mean(b)`` and the half-width of its Welch 95 % interval."""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return ma - mb, 0.0
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return ma - mb, float(stats.t.ppf(0.975, dof)) * se


def cell(m: float, h: float) -> str:
    """``mean ± half-width`` (``–`` for NaN)."""
    if m != m:
        return "–"
    return f"{m:.3f} ± {h:.3f}" if h > 0 else f"{m:.3f}"


__all__ = ["aggregate", "cell", "mean_ci", "welch_diff"]
