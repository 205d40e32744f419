"""Cox partial likelihood from additive risk-set sums.

Per stratum and event time tⱼ, with rᵢ = exp(xᵢᵀβ):
S0 = Σ_{Tᵢ≥tⱼ} rᵢ, S1 = Σ rᵢxᵢ, S2 = Σ rᵢxᵢxᵢᵀ over the risk set, D0, D1, D2 the same
over the deaths at tⱼ, d the number of deaths, and z = Σ_{deaths} xᵢ. All are sums
over patients, so sites' values add up to the pooled ones. Rows that are (entry, T] intervals
(time-varying covariates) are at risk when entryᵢ < tⱼ ≤ Tᵢ: the sums over Tᵢ ≥ tⱼ minus those over entryᵢ ≥ tⱼ.
"""

from __future__ import annotations

import numpy as np

from analyses.contract import Contribution


def sums(
    time: np.ndarray,
    event: np.ndarray,
    x: np.ndarray,
    beta: np.ndarray,
    stratum: np.ndarray,
    strata: int,
    times: np.ndarray,
    entry: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> Contribution:
    """Risk-set and tied-death sums, shaped (strata, event times, ...), for the agreed event `times`;
    with `entry`, row i is the interval (entryᵢ, timeᵢ]; with case `weights` wᵢ, rᵢ = wᵢ·exp(xᵢᵀβ), z sums
    wᵢxᵢ and `dw` holds the deaths' weights per event time (lifelines' weighted Efron likelihood)."""
    m, p = len(times), x.shape[1]
    r = np.exp(x @ beta) * (1.0 if weights is None else weights)
    # Patients in bin (k, j) are at risk at event times t₀..tⱼ of stratum k; earlier exits are in no risk set.
    interval = np.searchsorted(times, time, side="right") - 1
    at_risk = _bin_sums(stratum * m + interval, interval >= 0, r, x, strata * m)
    if entry is not None:  # rows not yet at risk at t₀..tⱼ (entry ≥ tⱼ) are taken off the same way
        entered = np.searchsorted(times, entry, side="right") - 1
        later = _bin_sums(stratum * m + entered, entered >= 0, r, x, strata * m)
        at_risk = [a - b for a, b in zip(at_risk, later, strict=True)]
    risk = [np.flip(np.cumsum(np.flip(a.reshape(strata, m, *a.shape[1:]), 1), 1), 1) for a in at_risk]
    death = (event == 1) & np.isin(time, times)
    exact = np.where(death, np.searchsorted(times, time), 0)
    tied = _bin_sums(stratum * m + exact, death, r, x, strata * m)
    tied = [a.reshape(strata, m, *a.shape[1:]) for a in tied]
    d = np.bincount((stratum * m + exact)[death], minlength=strata * m).reshape(strata, m)
    out = {
        "S0": risk[0], "S1": risk[1], "S2": risk[2],
        "D0": tied[0], "D1": tied[1], "D2": tied[2],
        "d": d, "z": x[death].sum(axis=0) if p else np.zeros(0),
    }  # fmt: skip
    if weights is not None:
        out["z"] = (weights[death, None] * x[death]).sum(axis=0)
        out["dw"] = np.bincount((stratum * m + exact)[death], weights[death], strata * m).reshape(strata, m)
    return out


def _bin_sums(bins: np.ndarray, keep: np.ndarray, r: np.ndarray, x: np.ndarray, size: int) -> list[np.ndarray]:
    """Σr, Σrx and Σrxxᵀ of the kept rows, per bin (memory linear in rows, not rows × p²)."""
    b, w, xs = bins[keep], r[keep], x[keep]
    p = x.shape[1]
    s1 = np.zeros((size, p))
    s2 = np.zeros((size, p, p))
    for a in range(p):
        s1[:, a] = np.bincount(b, w * xs[:, a], size)
        for c in range(a + 1):
            s2[:, a, c] = s2[:, c, a] = np.bincount(b, w * xs[:, a] * xs[:, c], size)
    return [np.bincount(b, w, size).astype(float), s1, s2]  # float even with no rows (numpy gives int64 then)


def partial_likelihood(total: Contribution, beta: np.ndarray, ties: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Log partial likelihood, gradient and Hessian (Efron or Breslow ties) from summed sums."""
    p = len(beta)
    d = total["d"].ravel().astype(np.int64)
    cells = np.flatnonzero(d)
    index = np.repeat(cells, d[cells])
    if ties == "efron":
        fraction = np.concatenate([np.arange(k) / k for k in d[cells]]) if cells.size else np.zeros(0)
    else:
        fraction = np.zeros(len(index))
    s0 = total["S0"].ravel()[index] - fraction * total["D0"].ravel()[index]
    s1 = total["S1"].reshape(-1, p)[index] - fraction[:, None] * total["D1"].reshape(-1, p)[index]
    s2 = total["S2"].reshape(-1, p, p)[index] - fraction[:, None, None] * total["D2"].reshape(-1, p, p)[index]
    mean = s1 / s0[:, None]
    # each tied death counts with its time's average weight (1 without weights)
    share = (total["dw"].ravel() / np.maximum(d, 1))[index] if "dw" in total else np.ones(len(index))
    loglik = float(total["z"] @ beta - share @ np.log(s0))
    gradient = total["z"] - share @ mean
    hessian = -(np.einsum("i,iab->ab", share, s2 / s0[:, None, None]) - (share[:, None] * mean).T @ mean)
    return loglik, gradient, hessian
