"""Answer one coordinator request from the site's own rows; nothing row-level leaves."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from analyses import registry
from analyses.contract import DataError
from hospital_node.site import SiteError, load_table, open_site
from workbench.messages import Reply, Request
from workbench.protocol import ProtocolError, parse

log = logging.getLogger(__name__)


def answer(folder: str | Path, request: Request) -> Reply:
    """Every pending analysis' contribution, or a reply that says why the site cannot answer."""
    site_id = Path(folder).name
    try:
        site = open_site(folder)
        site_id = site.id
        if hashlib.sha256(request.protocol_text.encode("utf-8")).hexdigest() != request.protocol_sha256:
            raise ProtocolError("the protocol text does not match its SHA-256; refusing")
        protocol = parse(request.protocol_text)
        table = protocol.model.cohort.table
        frame = load_table(site, table)
        file_name = site.table_path(table).name
        analyses = protocol.analyses
        contributions = {}
        for analysis_id, query in request.queries.items():
            if analysis_id not in analyses:
                raise ProtocolError(f"analysis '{analysis_id}' is not in the protocol; refusing")
            try:
                contributions[analysis_id] = registry.local(analyses[analysis_id], frame, query)
            except DataError as error:
                raise DataError(f"{file_name}: analysis '{analysis_id}': {error}") from None
        return Reply(site=site.id, rows=len(frame), contributions=contributions)
    except (SiteError, DataError, ProtocolError) as error:
        return Reply(site=site_id, error=str(error))
    except Exception as error:  # a node must answer, never crash; details stay in the node's log
        log.exception("site %s: internal error", site_id)
        return Reply(site=site_id, error=f"internal error at the node ({type(error).__name__}: {error})")
