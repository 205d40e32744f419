"""Ethics export: the pack an ethics committee and the data protection officers review."""

from __future__ import annotations

import json

import streamlit as st

from ui import state
from workbench import api
from workbench.errors import UserError

st.title("Ethics-review export")
st.caption(
    "Generated from the protocol, the analyses' own disclosure manifests and the sites' policies, so it cannot "
    "disagree with what the nodes do. Before a study it describes what will happen; for a finished run it adds "
    "what did happen: ε spent, audit chain heads and approvals per site."
)
workspace = state.workspace()
finished = [run for run in api.runs(workspace) if (run / "out" / "results.json").exists()]
DRAFT = "the draft protocol (before the study)"
source = st.selectbox("Export for", [DRAFT, *finished], format_func=lambda p: p if p == DRAFT else f"run {p.name}")
run = None if source == DRAFT else source
protocol, problem = state.protocol() if run is None else (None, "")
if run is None and protocol is None:
    st.error(f"The draft protocol is not valid yet: {problem}")
    st.stop()
if st.button("Generate the ethics-review pack", type="primary"):
    try:
        api.ethics_for_draft(workspace, protocol) if run is None else api.ethics_for_run(run)
    except UserError as error:
        st.error(str(error))
pack = api.ethics_folder(workspace, run)
if (pack / "ethics.json").exists():
    document = json.loads((pack / "ethics.json").read_text(encoding="utf-8"))
    st.success(
        f"Generated {document['generated']} for protocol `{document['study']['protocol_sha256'][:12]}` in {pack}"
    )
    if protocol is not None and protocol.sha256 != document["study"]["protocol_sha256"]:
        st.warning("The draft has changed since: generate the pack again.")
    columns = st.columns(3)
    for column, (name, mime) in zip(columns, (("ethics.pdf", "application/pdf"), ("ethics.html", "text/html"),
                                              ("ethics.json", "application/json")), strict=True):  # fmt: skip
        column.download_button(
            f"Download {name}", (pack / name).read_bytes(), file_name=name, mime=mime, on_click="ignore"
        )
    st.iframe(pack / "ethics.html", height=900)  # our own document, every value HTML-escaped by the template
