"""A dry run's verdicts (`workbench check`): per analysis and site, "will compute" or why the site would refuse."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui import views
from workbench import api
from workbench.protocol import Protocol


def show(protocol: Protocol, document: dict[str, Any]) -> None:
    """The verdicts as a table (analysis × site), then each refusal in full."""
    table = api.verdicts(protocol, document)
    silent = {site: answers["*"] for site, answers in document["sites"].items() if "*" in answers}
    refused = [(name, site, reason) for site, column in table.items() if site not in silent
               for name, reason in column.items() if reason != api.WILL_COMPUTE]  # fmt: skip
    if silent or refused:
        st.warning(f"Dry run: {len(silent)} site(s) would answer nothing and {len(refused)} analysis verdict(s) "
                   "are refusals. Nothing was released; each site logged the check.")  # fmt: skip
    else:
        st.success("Dry run: every chosen site will compute every analysis and training. Nothing was released; "
                   "each site logged the check.")  # fmt: skip
    if document["mode"] == "masked":
        k = document["limits"]["min_count"]
        st.caption(f"Secure aggregation: cross-site totals below the minimum count (k = {k}) are published as ranges "
                   "or not at all; that is decided on the real totals when the study runs.")  # fmt: skip
    else:
        st.caption("In the clear: each site applies its own minimum counts to its own reply.")
    views.table(table, "dry-run")
    for site, reason in silent.items():
        st.error(f"{site} would answer nothing: {reason}")
    for name, site, reason in refused:
        st.warning(f"{site} would refuse {name}: {reason}")
    for site, notes in document.get("notes", {}).items():
        for note in notes:
            st.info(f"Note from {site}: {note}")
