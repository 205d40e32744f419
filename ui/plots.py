"""Figures of study results (matplotlib), each downloadable as PNG and SVG."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def show(figure: Figure, name: str) -> None:
    """Draw the figure with PNG and SVG download buttons."""
    st.pyplot(figure)
    columns = st.columns(6)
    for column, kind in zip(columns[:2], ("png", "svg"), strict=False):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=kind, bbox_inches="tight", dpi=150)
        column.download_button(
            kind.upper(), buffer.getvalue(), file_name=f"{name}.{kind}", key=f"{name}-{kind}", on_click="ignore"
        )
    plt.close(figure)


def at_risk_times(result: dict[str, Any], count: int = 6) -> np.ndarray:
    last = max(max(curve["time"]) for curve in result["groups"].values())
    return np.linspace(0, last, count)


def at_risk(curve: dict[str, Any], times: np.ndarray) -> list[int]:
    """Number at risk just after each time (lifelines' convention for risk tables)."""
    timeline, risk, removed = (
        np.asarray(curve["time"]),
        np.asarray(curve["at_risk"]),
        np.asarray(curve["events"]) + np.asarray(curve["censored"]),
    )
    left = risk - removed  # at risk just after each timeline time
    return [int(left[timeline <= t][-1]) if np.any(timeline <= t) else int(risk[0]) for t in times]


def shown(n: int, floor: int) -> str:
    """A number at risk as published: below `floor` (the minimum count) as "<floor"."""
    return f"<{floor}" if 0 < n < floor else str(n)


def kaplan_meier(result: dict[str, Any], hide_below: int = 0) -> Figure:
    """Survival curves with 95 % confidence bands and a number-at-risk table under them."""
    times = at_risk_times(result)
    figure, (ax, table) = plt.subplots(2, 1, figsize=(7.5, 5.2), gridspec_kw={"height_ratios": [4, 1]}, sharex=True)
    for label, curve in result["groups"].items():
        name = f"{result['group']} = {label}" if result.get("group") else "all"
        line = ax.step(curve["time"], curve["survival"], where="post", label=name)[0]
        ax.fill_between(
            curve["time"], curve["ci_lower"], curve["ci_upper"], step="post", alpha=0.2, color=line.get_color()
        )
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("survival probability")
    ax.legend(loc="upper right", frameon=False)
    ax.grid(alpha=0.3)
    table.set_ylim(-0.5, len(result["groups"]) - 0.5)
    for row, (label, curve) in enumerate(result["groups"].items()):
        for t, n in zip(times, at_risk(curve, times), strict=True):
            table.text(t, len(result["groups"]) - 1 - row, shown(n, hide_below), ha="center", va="center", fontsize=8)
    table.set_yticks(range(len(result["groups"])), labels=list(reversed([str(k) for k in result["groups"]])))
    table.set_title("number at risk", fontsize=8, loc="left")
    table.set_xlabel("time" + (f" ({result['time_grid']} grid)" if result.get("time_grid") else ""))
    for side in ("top", "right", "left"):
        table.spines[side].set_visible(False)
    figure.tight_layout()
    return figure


def forest(result: dict[str, Any]) -> Figure:
    """Hazard ratios with 95 % confidence intervals on a log scale."""
    names = list(result["params"])
    figure, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.2))
    for row, name in enumerate(names):
        p = result["params"][name]
        ax.plot([np.exp(p["ci_lower"]), np.exp(p["ci_upper"])], [row, row], color="C0")
        ax.plot(p["exp_coef"], row, "s", color="C0")
    ax.axvline(1, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)), labels=names)
    ax.invert_yaxis()
    ax.set_xlabel("hazard ratio (95 % CI)")
    figure.tight_layout()
    return figure


def love(balance: dict[str, dict[str, float]]) -> Figure:
    """Love plot: each confounder's absolute standardized mean difference before and after weighting."""
    names = list(balance)
    figure, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.4))
    rows = np.arange(len(names))
    ax.plot([abs(balance[n]["smd_before"]) for n in names], rows, "o", mfc="none", color="C3", label="unweighted")
    ax.plot([abs(balance[n]["smd_after"]) for n in names], rows, "o", color="C0", label="weighted")
    ax.axvline(0.1, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(rows, labels=names)
    ax.invert_yaxis()
    ax.set_xlabel("absolute standardized mean difference (dashed: 0.1)")
    ax.legend(loc="lower right")
    figure.tight_layout()
    return figure


def training(summary: dict[str, Any], per_site: bool) -> Figure:
    """Held-out loss and AUC (segmentation: Dice, with the pooled 95% CI) per round, weighted over sites; each
    site's too for researchers."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    rounds = [r["round"] for r in summary["rounds"]]
    score = "dice" if summary["task"] == "image_segmentation" else "auc"
    if score == "dice":
        weighted = [r["evaluate"]["weighted"] for r in summary["rounds"]]
        axes[1].fill_between(rounds, [w.get("dice-ci-low", np.nan) for w in weighted],
                             [w.get("dice-ci-high", np.nan) for w in weighted], color="black", alpha=0.12,
                             label="95% CI (all held-out volumes)")  # fmt: skip
    for ax, metric in zip(axes, ("loss", score), strict=True):
        ax.plot(
            rounds,
            [r["evaluate"]["weighted"].get(metric) for r in summary["rounds"]],
            "o-",
            label="weighted",
            color="black",
        )
        if per_site:
            sites = sorted({s for r in summary["rounds"] for s in r["evaluate"]["sites"]})
            for site in sites:
                values = [r["evaluate"]["sites"].get(site, {}).get(metric) for r in summary["rounds"]]
                ax.plot(rounds, [np.nan if v is None else v for v in values], alpha=0.5, label=site)
        ax.set_xlabel("round")
        ax.set_title(f"held-out {metric}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return figure


def epsilon(summary: dict[str, Any]) -> Figure:
    """ε spent per site, against the training's target."""
    sites = sorted(summary["epsilon"])
    figure, ax = plt.subplots(figsize=(6, 0.4 * len(sites) + 1))
    ax.barh(sites, [summary["epsilon"][s] for s in sites], color="C2")
    ax.axvline(summary["target_epsilon"], color="red", linestyle="--", label="target")
    ax.set_xlabel("ε spent (DP-SGD, RDP accountant)")
    ax.legend(frameon=False)
    figure.tight_layout()
    return figure
