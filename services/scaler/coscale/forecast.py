"""A function's offered rate: its level and short-term prediction, robust to Poisson noise.

The history is the offered rate (requests per second, refused ones included) of each
closed one-second window, oldest first. A one-second count at rate λ scatters by ±√λ, so
sizing from the last window alone would raise and lower quotas with the noise. Instead:

- the **level** is the mean rate over the last `rate_window_s` plus one standard error,
  √(mean / n) for n windows (the tail of the one-second counts is in the profile's
  capacity, which is measured under Poisson arrivals);
- a **jump** overrides it at once: a last window above the mean by more than z one-window
  deviations (z·√mean, z = `noise_sigmas`) is taken as the new level;
- the **trend** is the least-squares slope over `trend_window_s`, used only when it stands
  out of the noise and only upwards — a falling load is followed lazily, by the
  hysteresis of scale-down and scale-in, not predicted. "Out of the noise" is as unlikely
  as z normal deviations: the slope of a few points over its standard error follows
  Student's t with n − 2 degrees of freedom, whose tail is far heavier than the normal's
  (for 6 points and z = 3, 6.4 standard errors, not 3); testing it at z would extrapolate
  a noise spike in one window out of every fifty or so, and a steady load would scale out
  and back in.

`predict(h)` = level + trend × h.

Worked numbers (z = 3, 5 s, 6 s): rates 20, 23, 18, 21, 19 req/s: mean 20.2, level 20.2 +
√(20.2/5) = 22.2; no jump (19 < 20.2 + 3·√20.2 = 33.7); the slope is not significant: 22.2
req/s at any horizon. Then a window of 45 req/s: 45 > 25.2 + 3·√25.2 = 40.3, a jump: the
level is 45. Rates 40, 44, 52, 58, 61, 67 req/s: slope 5.49 req/s per s, standard error
0.31 (17.7 of them, above t = 6.4), so the trend counts; level 56.4 + √(56.4/5) = 59.8;
a cold start (2.4 s) plus one second ahead: 59.8 + 5.49 × 3.4 = 78.4 req/s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Rates = Sequence[tuple[float, float]]   # (window end, s; offered req/s), oldest first


def recent(rates: Rates, now_s: float, window_s: float) -> list[float]:
    # epsilon so a window that ends exactly `window_s` ago is not counted twice over
    return [r for end, r in rates if end > now_s - window_s + 1e-6]


def highest(rates: Rates, now_s: float, window_s: float) -> float:
    return max(recent(rates, now_s, window_s), default=0.0)


def level(rates: Rates, now_s: float, window_s: float, sigmas: float) -> float:
    """The recent mean rate plus its standard error, or the last window's rate when it
    jumped out of the noise."""
    values = recent(rates, now_s, window_s)
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    bound = mean + math.sqrt(mean / len(values))
    last = values[-1]
    if last > mean + sigmas * math.sqrt(max(mean, 1.0)):
        return max(bound, last)
    return bound


def slope(rates: Rates, now_s: float, window_s: float, sigmas: float) -> float:
    """The least-squares slope (req/s per s) of the window, when it is positive and more
    than `sigmas` standard errors from 0; else 0."""
    points = [(end, r) for end, r in rates if end > now_s - window_s + 1e-6]
    n = len(points)
    if n < 3:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t <= 0:
        return 0.0
    b = sum((t - mean_t) * (r - mean_r) for t, r in points) / var_t
    residual = sum((r - mean_r - b * (t - mean_t)) ** 2 for t, r in points) / (n - 2)
    error = math.sqrt(residual / var_t)
    return b if b > 0 and b > student_t(sigmas, n - 2) * error else 0.0


def student_t(z: float, dof: int) -> float:
    """Student's t quantile with `dof` degrees of freedom at the normal quantile `z`
    (Cornish-Fisher expansion in 1/dof, three terms: within a few percent for dof ≥ 3,
    and above the exact value there, so the test errs on the side of no trend)."""
    v = float(max(dof, 1))
    z3, z5, z7 = z ** 3, z ** 5, z ** 7
    return (z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v ** 2)
            + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v ** 3))


def predict(rates: Rates, now_s: float, horizon_s: float, rate_window_s: float,
            trend_window_s: float, sigmas: float) -> float:
    """The rate to size for `horizon_s` ahead: the level plus the rising trend."""
    return (level(rates, now_s, rate_window_s, sigmas)
            + slope(rates, now_s, trend_window_s, sigmas) * horizon_s)
