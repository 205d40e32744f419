"""Audit: each site's tamper-evident log, its chain check, and its entries (searchable)."""

from __future__ import annotations

import streamlit as st

from ui import state
from workbench import api

st.title("Audit")
if api.federation() is not None:
    st.caption("On a federation each hospital's audit log stays at its node (its steward reads it with "
               "`workbench node audit verify`). Each run records every site's audit chain head when it answered: "
               "the steward can check the log still leads to it, so a deleted tail shows.")  # fmt: skip
    finished = [run for run in api.runs(state.workspace()) if (run / "out" / "results.json").exists()]
    if not finished:
        st.info("No finished run yet.")
    else:
        run = st.selectbox("Run", finished, format_func=lambda p: f"run {p.name}", key="audit-run")
        st.dataframe(api.audit_heads(api.results(run)), width="stretch", hide_index=True)
    folders = []
else:
    folders = api.site_folders(state.workspace())
if not folders:
    if api.federation() is None:
        st.info("No site folders in the workspace.")
    st.stop()
folder = st.selectbox("Site", folders, format_func=lambda p: p.name, key="audit-site")
summary, entries = api.audit(folder)
if summary["intact"]:
    st.success(f"{summary['site']}: chain intact, {summary['entries']} entries, head {summary['head']}")
else:
    st.error(f"{summary['site']}: chain BROKEN — {summary['problem']}")
search = st.text_input("Search entries (event, study, analysis, reason, …)", key="audit-search")
if not entries.empty:
    shown = entries.astype(str)
    if search:
        shown = shown[shown.apply(lambda row: row.str.contains(search, case=False, regex=False).any(), axis=1)]
    st.dataframe(shown, width="stretch", hide_index=True)
    st.caption(f"{len(shown)} of {len(entries)} entries")
