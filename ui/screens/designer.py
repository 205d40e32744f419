"""Study designer: build a protocol with forms, validated live by the CLI's own schema."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from pydantic import TypeAdapter, ValidationError

from analyses.registry import TYPES, AnySpec
from ui import forms, state
from workbench import api
from workbench.errors import UserError
from workbench.protocol import CohortSection, VariableSection
from workbench.training_spec import TrainingPrivacy, TrainingSpec

MISSING = {
    "complete_cases": "complete cases: one population for every analysis",
    "per_analysis": "per analysis: each drops only its own incomplete rows",
}

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
missing = list(MISSING).index(cohort["missing"]) if cohort.get("missing") in MISSING else 0
cohort["missing"] = left.selectbox("Missing values", list(MISSING), index=missing, format_func=MISSING.__getitem__,
                                   help=CohortSection.model_fields["missing"].description)  # fmt: skip
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


def _levels(section: Any) -> Any:
    """The declared values of a `[variables]` entry (None for one that is not a table: the schema says why)."""
    return section.get("levels") if isinstance(section, dict) else None


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

st.header("Declared values")
st.caption("The values each grouping column may take (groups, strata, crosstab rows and columns, t-test groups), and "
           "those of every text column an analysis reads: no site sends its own list of values, and a site refuses a "
           "value the protocol does not declare.")  # fmt: skip
variables = draft.setdefault("variables", {})
undeclared = api.undeclared(draft)
for name, ids in undeclared.items():
    st.warning(f"{', '.join(ids)} {'groups' if len(ids) == 1 else 'group'} by '{name}': declare the values "
               f"'{name}' may take (e.g. 1, 2, or text such as female, male)")  # fmt: skip
for name, section in list(variables.items()):
    shown, remove = st.columns([6, 1], vertical_alignment="center")
    shown.markdown(f"`{name}`: {forms.value_text(_levels(section))}")
    if remove.button("Remove", key=f"remove-variable-{name}"):
        del variables[name]
        state.save(draft)
        st.rerun()
which, values, declare = st.columns([2, 3, 1], vertical_alignment="bottom")
column = which.selectbox("Declare the values of", list(dict.fromkeys([*undeclared, *columns])), key="variable-column")
text = values.text_input(
    "Values (comma-separated)", forms.value_text(_levels(variables.get(column))), key=f"levels-{column}",
    help="numbers if every value is a number, else text",
)  # fmt: skip
if declare.button("Declare values", disabled=column is None):
    levels = forms.levels_of(text)  # kept as typed: whole numbers stay 1, 2 in the TOML
    try:
        VariableSection.model_validate({"levels": levels})
    except ValidationError as error:
        st.error(f"{column}: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors()))
    else:
        variables[column] = {"levels": levels}
        state.save(draft)
        st.rerun()

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
    st.caption(("Secure aggregation: each reply is masked; the rules apply to the published cross-site totals. "
                if api.masked(protocol) else "In the clear: each site applies the rules to its own reply. ")
               + f"Shown for the default site policy (minimum count {api.DEFAULT_LIMITS.min_count}); each site's "
               "own review is on the Sites page.")  # fmt: skip
    for analysis_id, manifest in api.disclosure(protocol).items():
        with st.expander(f"{analysis_id}: per round, what a site sends or checks"):
            st.dataframe(manifest, width="stretch", hide_index=True)
    for training in protocol.model.training:
        with st.expander(f"{training.id}: per round, the model's weights after local DP-SGD"):
            st.write(f"Each round every site sends the model's weights, its number of training rows, training loss and "
                     f"ε spent (target {training.privacy.target_epsilon:g} at δ {training.privacy.delta:g}); each "
                     "evaluation sends held-out loss, accuracy, AUC and the number of held-out rows. No rows, no images.")  # fmt: skip
