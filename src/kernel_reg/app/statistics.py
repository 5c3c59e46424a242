"""Paired comparisons a statistician accepts: t-intervals at n - 1 degrees of freedom and Holm's correction
over the comparisons of one family (the paired table of one study).

For differences d_1..d_n of one method and its reference on the same training subsets (each subset with
its data and initialisation shared by the two runs),

    mean = (1/n) sum_i d_i,  se = s / sqrt(n),  s^2 = (1/(n-1)) sum_i (d_i - mean)^2,
    interval = mean +- t_{1 - alpha/2, n-1} se,  p = 2 P(T_{n-1} > |mean| / se),

and over m comparisons Holm's step-down adjusted p-values, p_(i) sorted ascending,

    q_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).

A comparison is a gain (a loss) when its adjusted p-value is below alpha and its mean is positive
(negative); otherwise there is no evidence of a difference. scipy (the ``stats`` extra) gives the t law.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .extras import require

ALPHA = 0.05


@dataclass(frozen=True)
class Paired:
    """One paired comparison: n differences (points), their mean and standard error, the two-sided t-interval
    at level 1 - alpha, the p-value of mean = 0 and, within a family, the Holm-adjusted p-value."""

    n: int
    mean: float
    se: float
    low: float
    high: float
    p: float
    p_holm: float | None = None

    def verdict(self, alpha: float = ALPHA) -> str:
        """'gain' / 'loss' when the (Holm-adjusted, if any) p-value is below alpha, else 'no evidence'."""
        p = self.p if self.p_holm is None else self.p_holm
        if p < alpha:
            return "gain" if self.mean > 0 else "loss"
        return "no evidence"


def paired(differences: Sequence[float], alpha: float = ALPHA) -> Paired:
    """The t-interval and p-value of paired ``differences`` (at least 2); identical differences have se 0:
    their interval is the point, and p is 0 unless they are all 0."""
    n = len(differences)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 differences, got {n}")
    if not all(math.isfinite(d) for d in differences):
        raise ValueError(f"a paired comparison needs finite differences, got {list(differences)}")
    t = require("scipy.stats", "stats", "a paired t-interval").t
    mean = statistics.fmean(differences)
    se = statistics.stdev(differences) / math.sqrt(n)
    if se == 0.0:
        return Paired(n, mean, 0.0, mean, mean, 1.0 if mean == 0.0 else 0.0)
    half = float(t.ppf(1 - alpha / 2, n - 1)) * se
    p = float(2 * t.sf(abs(mean) / se, n - 1))
    return Paired(n, mean, se, mean - half, mean + half, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    if not all(0 <= p <= 1 for p in p_values):  # also refuses NaN, which would sort anywhere
        raise ValueError(f"Holm's correction needs p-values in [0, 1], got {list(p_values)}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def family(differences: Mapping[str, Sequence[float]], alpha: float = ALPHA) -> dict[str, Paired]:
    """Every comparison of one family with at least 2 differences, its p-value Holm-adjusted over them."""
    tested = {name: paired(d, alpha) for name, d in differences.items() if len(d) >= 2}
    adjusted = holm([c.p for c in tested.values()])
    return {name: replace(c, p_holm=q) for (name, c), q in zip(tested.items(), adjusted)}
