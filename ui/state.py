"""Durable dashboard state: the workspace on disk, so work survives page switches and restarts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from workbench import api
from workbench.errors import UserError
from workbench.protocol import Protocol

EMPTY: dict[str, Any] = {
    "study": {"id": "", "title": ""},
    "cohort": {"table": "patients"},
    "analysis": [],
    "training": [],
}


def workspace() -> Path:
    """The workspace folder (`workbench ui --workspace`, default `./workbench-workspace`)."""
    folder = Path(os.environ.get("WORKBENCH_WORKSPACE", "workbench-workspace")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def draft() -> dict[str, Any]:
    """The protocol being designed: kept in the session and saved to `draft.toml`."""
    if "draft" not in st.session_state:
        path = workspace() / "draft.toml"
        try:
            st.session_state.draft = api.draft_of(path.read_text()) if path.exists() else _copy(EMPTY)
        except UserError:
            st.session_state.draft = _copy(EMPTY)
        for key in ("analysis", "training"):
            st.session_state.draft.setdefault(key, [])
    return st.session_state.draft


def save(value: dict[str, Any]) -> None:
    st.session_state.draft = value
    (workspace() / "draft.toml").write_text(api.protocol_text(value), encoding="utf-8")


def protocol() -> tuple[Protocol | None, str]:
    """The draft, validated: the protocol, or None and what is wrong."""
    return api.check(api.protocol_text(draft()))


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    return {key: (dict(item) if isinstance(item, dict) else list(item) if isinstance(item, list) else item)
            for key, item in value.items()}  # fmt: skip
