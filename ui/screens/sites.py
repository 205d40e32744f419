"""Sites: the workspace's site folders (embedded simulation), their policies, approvals and budgets."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import state
from workbench import api
from workbench.errors import UserError

st.title("Sites")
workspace = state.workspace()
folders = api.site_folders(workspace)
protocol, problem = state.protocol()
federation = api.federation()
if federation is not None:
    st.caption(f"Federation: {federation.describe()}")
    if protocol is None:
        st.error(f"The draft protocol is not valid: {problem}. Fix it in the Study designer.")
        st.stop()
    st.write("Each hospital's data steward approves the protocol at their node "
             f"(`workbench node approve protocol.toml`, SHA-256 `{protocol.sha256[:12]}…`). Ask the connected "
             "hospitals where they stand: a dry run, in which nothing is released and each site logs the check.")  # fmt: skip
    if st.button("Ask the connected hospitals (dry run)"):
        with st.spinner("Asking every connected hospital (nothing is released)…"):
            try:
                st.session_state.connected = {
                    "sha256": protocol.sha256,
                    "document": api.dry_run(protocol, [], federation),
                }
            except UserError as error:
                st.session_state.connected = {"sha256": protocol.sha256, "error": str(error)}
    connected = st.session_state.get("connected")
    if connected and connected["sha256"] == protocol.sha256:
        if "error" in connected:
            st.error(f"The federation could not be asked: {connected['error']}")
        else:
            st.dataframe(api.connected_sites(protocol, connected["document"]), width="stretch", hide_index=True)
    st.stop()
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
