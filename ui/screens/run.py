"""Run: start the study on the embedded simulation (or the federation) and follow it round by round."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import streamlit as st

from ui import dry_run, state
from workbench import api
from workbench.errors import UserError

st.title("Run")
workspace = state.workspace()
protocol, problem = state.protocol()
federation = api.federation()
folders = api.site_folders(workspace)
if protocol is None:
    st.error(f"The draft protocol is not valid: {problem}. Fix it in the Study designer.")
    st.stop()
if federation is not None:
    st.caption(f"Federation: {federation.describe()}; every connected hospital takes part.")
    chosen, sites, where = ["federation"], [], "on the federation"
else:
    if not folders:
        st.warning("No site folders yet: create them on the Sites page.")
        st.stop()
    status = {f.name: api.site_status(f, protocol) for f in folders}
    chosen = st.multiselect("Sites", [f.name for f in folders], default=[n for n, s in status.items() if s["approved"]])
    unapproved = [name for name in chosen if not status[name]["approved"]]
    if unapproved:
        st.warning(f"Not approved at {', '.join(unapproved)}: they will refuse (approve on the Sites page).")
    sites, where = [f for f in folders if f.name in chosen], "on the embedded simulation"
check, start = st.columns([1, 4])
if check.button("Check (dry run)", disabled=not chosen, help="asks each site whether it would compute every "
                "analysis and training; nothing is released, each site logs the check"):  # fmt: skip
    checked = {"sha256": protocol.sha256, "sites": chosen, "at": datetime.now().strftime("%H:%M:%S")}
    with st.spinner("Asking each site whether it would compute every analysis (nothing is released)…"):
        try:
            checked["document"] = api.dry_run(protocol, sites, federation)
        except UserError as error:
            checked["error"] = str(error)
    st.session_state.checked = checked
if start.button(f"Run {where}", type="primary", disabled=not chosen):
    st.session_state.run = str(api.start_run(workspace, protocol, sites, federation))
checked = st.session_state.get("checked")
if checked and checked["sha256"] == protocol.sha256 and checked["sites"] == chosen:  # else it is out of date
    st.caption(f"Dry run at {checked['at']} (approvals since then are not reflected: check again)")
    if "error" in checked:
        st.error(f"The dry run could not run: {checked['error']}")
    else:
        dry_run.show(protocol, checked["document"])

runs = api.runs(workspace)
current = st.session_state.get("run") or (str(runs[0]) if runs else None)


@st.fragment(run_every=1.0)
def progress() -> None:
    """The run's state, refreshed every second (the page stays responsive)."""
    if current is None:
        st.info("No run yet.")
        return
    run = api.run_state(Path(current))
    rounds = re.findall(r"round\s+(\d+):?\s+(.*)", run["log"])
    trainings = re.findall(r"training (\S+): round (\d+)/(\d+)(.*)", run["log"])
    st.caption(f"run {Path(current).name}")
    if rounds:
        number, pending = rounds[-1]
        st.write(f"Statistics: round {number} — {pending.strip()}")
    for training_id, done, total, metrics in trainings[-3:]:
        st.progress(int(done) / int(total), text=f"training {training_id}: round {done}/{total} {metrics.strip()}")
    if run["state"] == "running":
        st.info("Running…")
    elif run["state"] == "done":
        st.success("Finished: see Results.")
    elif run["state"] == "failed":
        st.warning("Finished, but some analyses failed or were refused: see Results.")
        for line in run["log"].splitlines():
            if line.startswith(("analysis '", "training '")):
                st.write(line)
    else:
        st.error(f"The study did not run: {run['error']}")
    with st.expander("Log"):
        st.code(run["log"][-6000:])


progress()
