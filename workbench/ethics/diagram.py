"""The data-flow diagram of the ethics export: sites, what stays, what crosses, what the coordinator keeps."""

from __future__ import annotations

import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

SHOWN_SITES = 5
"""Sites drawn one by one; more are summarised in one box."""

_SITE, _NODE, _COORDINATOR, _INK = "#e8f1e4", "#d4e6f5", "#f6e7cf", "#1b3a57"


def png(sites: list[str], labels: Mapping[str, str]) -> bytes:
    """The diagram as PNG; `labels` are the template's texts (see the template's `diagram`)."""
    shown = sites[:SHOWN_SITES] if len(sites) <= SHOWN_SITES else sites[: SHOWN_SITES - 1]
    rows = [*shown, labels["more"].format(count=len(sites) - len(shown))] if len(shown) < len(sites) else shown
    rows = rows or [labels["site"]]
    height = max(3.2, 1.05 * len(rows) + 0.9)
    figure, axes = plt.subplots(figsize=(10, height), dpi=150)
    axes.set_xlim(0, 10)
    axes.set_ylim(0, height)
    axes.axis("off")
    top = height - 0.75
    axes.text(1.35, height - 0.3, labels["hospitals"], ha="center", fontsize=10, weight="bold", color=_INK)
    axes.text(8.25, height - 0.3, labels["coordinator_title"], ha="center", fontsize=10, weight="bold", color=_INK)
    centres = [top - 1.05 * k - 0.4 for k in range(len(rows))]
    middle = (top + centres[-1]) / 2
    for name, y in zip(rows, centres, strict=True):
        _box(axes, 0.1, y - 0.4, 2.5, 0.8, _SITE, f"{name}\n{labels['site_data']}")
        _box(axes, 3.1, y - 0.4, 2.4, 0.8, _NODE, labels["node"])
        _arrow(axes, (2.6, y), (3.1, y))
        _arrow(axes, (5.5, y), (7.0, middle + (y - middle) * 0.35), both=True)
    axes.plot([5.85, 5.85], [0.35, height - 0.15], linestyle="--", color="#a33", linewidth=1)
    axes.text(8.25, middle - 1.15, labels["wire"], ha="center", va="top", fontsize=7.5, color=_INK)
    _box(axes, 7.0, middle - 1.0, 2.5, 2.0, _COORDINATOR, labels["coordinator"])
    axes.text(5.0, 0.12, labels["footer"], ha="center", fontsize=8, style="italic", color="#444")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _box(axes: plt.Axes, x: float, y: float, width: float, height: float, colour: str, text: str) -> None:
    axes.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.02,rounding_size=0.08",
                                  facecolor=colour, edgecolor=_INK, linewidth=0.8))  # fmt: skip
    axes.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=7.5, color="#111", wrap=True)


def _arrow(axes: plt.Axes, start: tuple[float, float], end: tuple[float, float], both: bool = False) -> None:
    style = "<|-|>" if both else "-|>"
    axes.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=9, color=_INK, linewidth=0.8))
