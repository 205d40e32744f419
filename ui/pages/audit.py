"""Audit: each site's tamper-evident log, its chain check, and its entries (searchable)."""

from __future__ import annotations

import streamlit as st

from ui import state
from workbench import api

st.title("Audit")
folders = api.site_folders(state.workspace())
if not folders:
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
