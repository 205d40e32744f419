"""Study designer: build a protocol with forms, validated live by the CLI's own schema."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from pydantic import TypeAdapter, ValidationError

from analyses.registry import TYPES, AnySpec
from ui import forms, state
from workbench import api
from workbench.errors import UserError
from workbench.training_spec import TrainingPrivacy, TrainingSpec

st.title("Study designer")
draft = state.draft()
sites = api.site_folders(state.workspace())
columns = api.columns(sites, draft.get("cohort", {}).get("table", "patients"))

uploaded = st.file_uploader("Start from an existing protocol (TOML)", type=["toml"])
if uploaded is not None and st.session_state.get("uploaded") != uploaded.file_id:
    try:
        state.save(api.draft_of(uploaded.getvalue().decode("utf-8")))
        st.session_state.uploaded = uploaded.file_id
        st.rerun()
    except (UserError, UnicodeDecodeError) as error:
        st.error(f"{uploaded.name}: {error}")

left, right = st.columns(2)
study = draft.setdefault("study", {})
study["id"] = left.text_input("Study id", study.get("id", ""), help="letters, digits, . _ -")
study["title"] = right.text_input("Title", study.get("title", ""))
study["description"] = st.text_area("Purpose / description", study.get("description", ""))
cohort = draft.setdefault("cohort", {})
cohort["table"] = left.text_input("Cohort table", cohort.get("table", "patients"))
privacy = draft.setdefault("privacy", {})
privacy["secure_aggregation"] = right.checkbox(
    "Secure aggregation (the coordinator sees only sums over ≥ 3 sites)", privacy.get("secure_aggregation", True)
)
if sites and st.checkbox(
    "Pin the workspace's sites (their identity keys) for secure aggregation", value=True, key="pin"
):
    draft["federation"] = {"sites": api.roster(sites)}
else:
    draft.pop("federation", None)
st.caption("Cohort filters (structured conditions, never code)")
filters = st.data_editor(
    pd.DataFrame(
        [
            {"column": f["column"], "op": f["op"], "value": forms.value_text(f.get("value"))}
            for f in cohort.get("filters", [])
        ],
        columns=["column", "op", "value"],
    ),
    num_rows="dynamic",
    key="filters",
    width="stretch",
    column_config={
        "column": st.column_config.SelectboxColumn("column", options=columns),
        "op": st.column_config.SelectboxColumn("op", options=forms.OPERATORS),
        "value": st.column_config.TextColumn(
            "value", help="a number or text; for in / not in: values separated by commas"
        ),
    },
)
cohort["filters"] = [forms.filter_of(row) for row in filters.to_dict("records") if row.get("column") and row.get("op")]


def _listed(draft: dict, section: str, kind: str) -> None:
    """The draft's blocks of one section, each in an expander with a Remove button."""
    for number, block in enumerate(list(draft[section])):
        with st.expander(f"{block.get('id')} · {block.get(kind)}"):
            st.json(block)
            if st.button("Remove", key=f"remove-{section}-{number}"):
                draft[section].pop(number)
                state.save(draft)
                st.rerun()


st.header("Analyses")
_listed(draft, "analysis", "type")
kind = st.selectbox("Add an analysis", list(TYPES), key="new-analysis-type")
with st.form("new-analysis", clear_on_submit=False):
    identifier = st.text_input("Analysis id", key="new-analysis-id")
    block = {"id": identifier, "type": kind, **forms.fields(TYPES[kind].spec, columns, key=f"new-{kind}")}
    if st.form_submit_button("Add analysis"):
        try:
            TypeAdapter(AnySpec).validate_python(block)
            draft["analysis"].append(block)
            state.save(draft)
            st.rerun()
        except ValidationError as error:
            st.error("; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in error.errors()))

st.header("Model training (differential privacy)")
_listed(draft, "training", "task")
with st.form("new-training"):
    identifier = st.text_input("Training id", key="new-training-id")
    block = {"id": identifier, **forms.fields(TrainingSpec, columns, key="new-training")}
    block["privacy"] = forms.fields(TrainingPrivacy, columns, key="new-training-privacy",
                                    values={"target_epsilon": 3.0})  # fmt: skip
    if st.form_submit_button("Add training"):
        try:
            TrainingSpec.model_validate(block)
            draft["training"].append(block)
            state.save(draft)
            st.rerun()
        except ValidationError as error:
            st.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))

state.save(draft)
st.header("Protocol")
text = api.protocol_text(draft)
protocol, problem = api.check(text)
if protocol is None:
    st.error(f"Not valid yet: {problem}")
else:
    st.success(f"Valid protocol · SHA-256 {protocol.sha256}")
st.download_button(
    "Download protocol.toml", text.encode(), file_name="protocol.toml", key="download-protocol", on_click="ignore"
)  # no rerun: a rerun can cancel the download in flight
st.code(text, language="toml")
if protocol is not None:
    st.header("What leaves each site")
    for analysis_id, manifest in api.disclosure(protocol).items():
        with st.expander(f"{analysis_id}: per round, what a site sends or checks"):
            st.dataframe(manifest, width="stretch", hide_index=True)
    for training in protocol.model.training:
        with st.expander(f"{training.id}: per round, the model's weights after local DP-SGD"):
            st.write(f"Each round every site sends the model's weights, its number of training rows, training loss and "
                     f"ε spent (target {training.privacy.target_epsilon:g} at δ {training.privacy.delta:g}); each "
                     "evaluation sends held-out loss, accuracy, AUC and the number of held-out rows. No rows, no images.")  # fmt: skip
