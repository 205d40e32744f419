"""Ethics export: the document an ethics committee reviews (generated from the protocol and policies)."""

from __future__ import annotations

import streamlit as st

st.title("Ethics-review export")
st.info(
    "The ethics-review pack is not built yet. Generated from the protocol, the analyses' own disclosure "
    "manifests and the sites' policies, it will contain: study identification (protocol SHA-256, sites); "
    "purpose; a systematic description of the processing with a data-flow diagram; what leaves each site, per "
    "analysis and round; data minimisation; privacy parameters (minimum cell counts, time grids, ε/δ per site); "
    "imaging (DICOM read locally only); risks and mitigations; security measures (TLS, node authentication, "
    "approval by hash, audit chain); the audit summary of a run; sign-off blocks; and the full protocol."
)
st.caption("Until then, each site's review is on the Sites page and what leaves each site is on the Study designer.")
