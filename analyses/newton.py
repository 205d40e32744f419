"""Newton-Raphson driven by the coordinator: it chooses every β, sites only evaluate.

Each evaluation is one round in which sites return additive pieces of the
objective, its gradient and its Hessian at the β the coordinator broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from analyses.contract import AnalysisError, Contribution, Query

Evaluation = tuple[float, np.ndarray, np.ndarray]
"""Objective, gradient and Hessian at one β."""

TOLERANCE = 1e-22
"""Stop when the Newton decrement gᵀ(−H)⁻¹g is below this, relative to |objective|."""

MAX_CONDITION = 1e12
"""Largest condition number of the information matrix (scaled to unit diagonal) that is accepted."""


@dataclass(frozen=True)
class NewtonFit:
    """The maximum and the derivatives evaluated there (never one step earlier)."""

    beta: np.ndarray
    objective: float
    gradient: np.ndarray
    hessian: np.ndarray
    initial_objective: float
    evaluations: int
    totals: Contribution
    """The sites' summed reply at the final β (deviance, event counts, ...)."""


def maximize(
    beta: np.ndarray,
    ask: Callable[[np.ndarray], Query],
    evaluate: Callable[[Contribution, np.ndarray], Evaluation],
    max_evaluations: int = 60,
) -> Generator[Query, Contribution, NewtonFit]:
    """Maximize a concave objective from `beta`, halving steps that would decrease it."""
    totals = yield ask(beta)
    objective, gradient, hessian = evaluate(totals, beta)
    initial, evaluations = objective, 1
    while True:
        step = _newton_step(hessian, gradient)
        decrement = float(gradient @ step)
        if decrement <= TOLERANCE * max(1.0, abs(objective)):
            return NewtonFit(beta, objective, gradient, hessian, initial, evaluations, totals)
        scale = 1.0
        while True:
            if evaluations >= max_evaluations:
                raise AnalysisError(
                    f"did not converge in {max_evaluations} Newton steps "
                    "(perfect separation, or a covariate that predicts the outcome exactly?)"
                )
            candidate = beta + scale * step
            candidate_totals = yield ask(candidate)
            result = evaluate(candidate_totals, candidate)
            evaluations += 1
            tiny = decrement < 1e-10 * max(1.0, abs(objective))  # below the objective's rounding noise
            if np.isfinite(result[0]) and (result[0] >= objective or tiny):
                break
            scale /= 2
        beta, totals = candidate, candidate_totals
        objective, gradient, hessian = result


def _newton_step(hessian: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Solve −H·step = g, refusing a (numerically) singular information matrix."""
    information = -hessian
    scale = np.sqrt(np.diag(information))
    singular = AnalysisError(
        "the information matrix is singular: a covariate is constant, collinear with others, "
        "or separates the outcome perfectly"
    )
    if not np.all(np.isfinite(information)) or np.any(scale <= 0):
        raise singular
    if np.linalg.cond(information / np.outer(scale, scale)) > MAX_CONDITION:
        raise singular
    return np.linalg.solve(information, gradient)
