"""The dashboard's entry point: `workbench ui` runs `streamlit run` on this file."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import roles

PAGES = Path(__file__).parent / "screens"  # not "pages": Streamlit would also list that folder itself

st.set_page_config(page_title="Multi-center research workbench", layout="wide")
role = roles.current()
st.session_state.role = role
researcher = [
    st.Page(PAGES / "designer.py", title="Study designer", icon=":material/edit_note:", default=True),
    st.Page(PAGES / "sites.py", title="Sites", icon=":material/local_hospital:"),
    st.Page(PAGES / "run.py", title="Run", icon=":material/play_arrow:"),
    st.Page(PAGES / "results.py", title="Results", icon=":material/bar_chart:"),
    st.Page(PAGES / "ethics.py", title="Ethics export", icon=":material/description:"),
    st.Page(PAGES / "audit.py", title="Audit", icon=":material/fact_check:"),
]
viewer = [st.Page(PAGES / "results.py", title="Results", icon=":material/bar_chart:", default=True)]
st.sidebar.caption(f"{role.user} · {role.name}")
st.navigation(viewer if role.viewer else researcher).run()
