"""Results: every analysis and model of a finished run, as tables and figures (downloadable)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import roles, state, views
from workbench import api

st.title("Results")
role = st.session_state.get("role") or roles.current()
finished = [run for run in api.runs(state.workspace()) if (run / "out" / "results.json").exists()]
if not finished:
    st.info("No finished run yet: start one on the Run page.")
    st.stop()
run = st.selectbox("Run", finished, format_func=lambda p: p.name, key="results-run")
results = api.results(run)
st.markdown(f"**{results['study']['title']}** · protocol `{results['protocol_sha256'][:12]}` · "
            f"{results['rounds']} rounds on {results['engine']} · secure aggregation: "
            f"{results['secure_aggregation'].get('mode', 'none')}")  # fmt: skip
if not role.viewer:
    sites = pd.DataFrame([{"site": s["id"], "rows": s["rows"], "queries": s["usage"].get("queries"),
                           "audit head": s["audit_head"][:16]} for s in results["sites"]])  # fmt: skip
    views.table(sites, "sites", index=False)
    for refusal in results["refusals"]:
        st.warning(f"{refusal['site']} refused {refusal['analysis']}: {refusal['reason']}")
for analysis_id, result in results["analyses"].items():
    views.analysis(analysis_id, result, role)
for training_id, summary in results.get("training", {}).items():
    views.training(training_id, summary, role)
