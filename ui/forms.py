"""Form fields for an analysis or training block, generated from its schema (the CLI's own)."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, get_args, get_origin

import streamlit as st
from pydantic import BaseModel

COLUMN_FIELDS = {"duration", "event", "group", "outcome", "variable", "row", "column", "exposure", "x", "y", "patient",
                 "start", "stop", "treatment"}  # fmt: skip
"""Fields naming one column of the cohort table."""
COLUMNS_FIELDS = {"variables", "covariates", "features", "strata", "confounders"}
"""Fields naming several columns."""
GRIDS = ["(exact times)", "day", "week", "month", "quarter", "year"]
OPERATORS = ["==", "!=", "<", "<=", ">", ">=", "in", "not in", "missing", "not missing"]
SKIPPED = {"id", "type", "privacy"}


def fields(
    model: type[BaseModel], columns: list[str], key: str, values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One widget per field of `model`; returns the block as a protocol would hold it."""
    values = values or {}
    block: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in SKIPPED:
            continue
        label = name.replace("_", " ")
        help_text = info.description
        default = values.get(name, None if info.is_required() else info.get_default(call_default_factory=True))
        widget_key = f"{key}-{name}"
        if name in COLUMN_FIELDS:
            options = ["—", *columns]
            chosen = st.selectbox(label, options, index=options.index(default) if default in options else 0,
                                  key=widget_key, help=help_text)  # fmt: skip
            block[name] = None if chosen == "—" else chosen
        elif name in COLUMNS_FIELDS:
            options = [*columns, *(["site"] if name == "strata" else [])]
            block[name] = st.multiselect(label, options, default=[d for d in (default or []) if d in options],
                                         key=widget_key, help=help_text)  # fmt: skip
        elif name == "time_grid":
            chosen = st.selectbox(label, GRIDS, index=GRIDS.index(default) if default in GRIDS else 0, key=widget_key,
                                  help="cells of the grid are what per-time counts describe")  # fmt: skip
            block[name] = None if chosen == GRIDS[0] else chosen
        else:
            block[name] = _scalar(label, info.annotation, default, widget_key, help_text)
    return {key_: value for key_, value in block.items() if value is not None and value != []}


def _scalar(label: str, annotation: Any, default: Any, key: str, help_text: str | None) -> Any:
    options = _literals(annotation)
    if options:
        choices = ["—", *options] if type(None) in get_args(annotation) else list(options)
        chosen = st.selectbox(label, choices, index=choices.index(default) if default in choices else 0, key=key,
                              help=help_text)  # fmt: skip
        return None if chosen == "—" else chosen
    base = _base(annotation)
    if base is bool:
        return st.checkbox(label, value=bool(default), key=key, help=help_text)
    if base is int:
        return int(st.number_input(label, value=int(default or 0), step=1, key=key, help=help_text))
    if base is float:
        return float(st.number_input(label, value=float(default or 0.0), format="%g", key=key, help=help_text))
    if base is list:  # values (groups, arms, causes, quantiles …): comma-separated, numbers where all are
        text = st.text_input(label, value=value_text(default), key=key, help=help_text)
        return levels_of(text) or None
    if base is tuple:
        text = st.text_input(label, value=", ".join(map(str, default or ())), key=key, help=help_text)
        numbers = [_number(part.strip()) for part in text.replace("x", ",").split(",") if part.strip()]
        return [int(n) if isinstance(n, float) and n.is_integer() else n for n in numbers] or None
    text = st.text_input(label, value="" if default is None else str(default), key=key, help=help_text)
    return text or None


def _literals(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return ()


def _base(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _base(args[0]) if args else None
    return get_origin(annotation) or annotation


def filter_of(row: dict[str, Any]) -> dict[str, Any]:
    """A cohort filter from an editor row: numbers where the text is a number, lists for in / not in."""
    condition: dict[str, Any] = {"column": row["column"], "op": row["op"]}
    text = str(row.get("value") or "").strip()
    if row["op"] in ("in", "not in"):
        condition["value"] = [_number(part.strip()) for part in text.split(",") if part.strip()]
    elif row["op"] not in ("missing", "not missing"):
        condition["value"] = _number(text)
    return condition


def levels_of(text: str) -> list[float | str]:
    """Declared values from comma-separated text: numbers if every one is a number (whole ones as int), else text."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    numbers = [_number(part) for part in parts]
    if any(isinstance(number, str) or not math.isfinite(number) for number in numbers):
        return list(parts)
    return [int(number) if float(number).is_integer() else number for number in numbers]


def value_text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value)


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text
