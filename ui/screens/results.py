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
aggregation = results["secure_aggregation"]
published_min = int(aggregation.get("min_count") or 0)
thresholds = f" · minimum count {published_min} on {aggregation['thresholds']}" if "thresholds" in aggregation else ""
st.markdown(f"**{results['study']['title']}** · protocol `{results['protocol_sha256'][:12]}` · "
            f"{results['rounds']} rounds on {results['engine']} · secure aggregation: "
            f"{aggregation.get('mode', 'none')}{thresholds}")  # fmt: skip
if not role.viewer and results["sites"]:  # a study of trainings only has no statistics sites' table
    sites = pd.DataFrame([{"site": s["id"], "rows": s.get("rows"), "queries": s["usage"].get("queries"),
                           "audit head": s["audit_head"][:16]} for s in results["sites"]])  # fmt: skip
    if sites["rows"].isna().all():  # under secure aggregation a site's cohort size never leaves it
        sites = sites.drop(columns="rows")
    views.table(sites, "sites", index=False)
if not role.viewer:
    for refusal in results["refusals"]:
        st.warning(f"{refusal['site']} refused {refusal['analysis']}: {refusal['reason']}")
for analysis_id, result in results["analyses"].items():
    views.analysis(analysis_id, result, role, published_min)
for training_id, summary in results.get("training", {}).items():
    views.training(training_id, summary, role, run / "out")
