"""The ethics-review export: `ethics.html`, `ethics.pdf` and `ethics.json` for a study protocol.

Generated from the protocol, the analyses' disclosure manifests and the sites' policies (and,
after a run, its results and the sites' audit logs), so it cannot disagree with the code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hospital_node.site import SiteError, open_site
from workbench import protocol as protocol_module
from workbench.errors import UserError
from workbench.ethics import content, diagram, render

FILES = ("ethics.json", "ethics.html", "ethics.pdf", "data-flow.png")


def export(
    protocol_path: Path,
    site_folders: list[Path],
    run: Path | None,
    out: Path,
    language: str = "en",
    templates: Path | None = None,
) -> list[Path]:
    """Write the export's files into `out` (all of them or, on any error, none); return their paths."""
    study = protocol_module.load(protocol_path)
    page = render.template(language, templates)
    try:
        sites = [open_site(folder) for folder in site_folders]
    except SiteError as error:
        raise UserError(str(error)) from None
    ids = [site.id for site in sites]
    if len(set(ids)) != len(ids):
        raise UserError(f"site '{next(i for i in ids if ids.count(i) > 1)}' is given twice with --site")
    document = content.build(study, sites, run, language)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".ethics-"))
    try:
        picture = diagram.png([site["id"] for site in document["sites"]], render.diagram_labels(page, document))
        (staging / "data-flow.png").write_bytes(picture)
        (staging / "ethics.json").write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", "utf-8")
        (staging / "ethics.html").write_text(render.html(page, document, picture), encoding="utf-8")
        (staging / "ethics.pdf").write_bytes(render.pdf(page, document, staging / "data-flow.png"))
        for name in FILES:
            os.chmod(staging / name, 0o644)
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in FILES]
