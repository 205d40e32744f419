"""Sites: the workspace's site folders (embedded simulation), their policies, approvals and budgets."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import state
from workbench import api

st.title("Sites")
workspace = state.workspace()
folders = api.site_folders(workspace)
protocol, problem = state.protocol()
if not folders:
    st.info(f"No site folders in {workspace / 'sites'} yet.")
    if st.button("Create the demo hospitals (NCCTG lung cancer, 5 sites)"):
        with st.spinner("Building five hospital site folders…"):
            api.build_demo_sites(workspace)
        st.rerun()
    st.stop()
st.dataframe(pd.DataFrame([api.site_status(f, protocol) for f in folders]), width="stretch", hide_index=True)
if protocol is None:
    st.warning(f"The draft protocol is not valid yet ({problem}); approvals refer to a valid protocol.")
    st.stop()
st.subheader(f"Approval of protocol {protocol.sha256[:12]} ({protocol.model.study.id})")
st.caption("In a real deployment each hospital's data steward approves with `workbench node approve`. For these local "
           "site folders you act as their stewards: read each review first.")  # fmt: skip
chosen = st.multiselect("Sites", [f.name for f in folders], default=[f.name for f in folders], key="approve-sites")
for folder in folders:
    if folder.name in chosen:
        review, conflicts = api.approval_review(folder, protocol)
        with st.expander(f"{folder.name}: the steward's review" + (" — REFUSED by policy" if conflicts else "")):
            st.code(review)
            for conflict in conflicts:
                st.error(conflict)
if st.button("Approve at the selected sites (as their stewards)"):
    for folder in folders:
        if folder.name in chosen and not api.approval_review(folder, protocol)[1]:
            api.approve(folder, protocol, by="dashboard (local steward)")
    st.rerun()
