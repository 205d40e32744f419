"""Render the ethics document: HTML from a Jinja2 template per language, PDF from that HTML (xhtml2pdf)."""

from __future__ import annotations

import base64
import io
import logging
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, StrictUndefined, Template
from jinja2 import TemplateNotFound as JinjaTemplateNotFound

from workbench.errors import UserError

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
"""DejaVu fonts (shipped with matplotlib): they cover Greek, arrows and mathematical signs."""


def template(language: str, folder: Path | None) -> Template:
    """`ethics.<language>.html.j2` from `folder` if it has one, else the built-in one."""
    loaders = [FileSystemLoader(folder)] if folder else []
    environment = Environment(
        loader=ChoiceLoader([*loaders, PackageLoader("workbench.ethics", "templates")]),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["wrap_lines"] = wrap_lines
    try:
        return environment.get_template(f"ethics.{language}.html.j2")
    except JinjaTemplateNotFound:
        known = sorted(name.split(".")[1] for name in environment.list_templates(filter_func=_is_ethics))
        where = f" or in {folder}" if folder else ""
        raise UserError(f"no ethics template for language '{language}'{where} (available: {', '.join(known)}); "
                        f"add ethics.{language}.html.j2 to a folder given with --templates") from None  # fmt: skip


def wrap_lines(text: str, width: int) -> str:
    """Wrap each line longer than `width` (a PDF cannot scroll a long line of a protocol)."""
    return "\n".join(textwrap.fill(line, width, subsequent_indent="    ") if len(line) > width else line
                     for line in text.splitlines())  # fmt: skip


def _is_ethics(name: str) -> bool:
    return name.startswith("ethics.") and name.endswith(".html.j2")


def diagram_labels(page: Template, document: dict[str, Any]) -> dict[str, str]:
    """The diagram's texts, set in the template as `diagram`."""
    return dict(page.make_module({"doc": document, "pdf": False, "diagram_src": "", "fonts": ""}).diagram)


def html(page: Template, document: dict[str, Any], diagram_png: bytes) -> str:
    """Standalone HTML: the diagram is embedded."""
    source = "data:image/png;base64," + base64.b64encode(diagram_png).decode("ascii")
    return page.render(doc=document, pdf=False, diagram_src=source, fonts="")


def pdf(page: Template, document: dict[str, Any], diagram: Path) -> bytes:
    """The PDF (A4, table of contents, page numbers); it may read only the diagram and the fonts."""
    from xhtml2pdf import pisa
    from xhtml2pdf.config.resources import ResourceAccessPolicy

    markup = page.render(doc=document, pdf=True, diagram_src=str(diagram), fonts=str(FONTS))
    policy = ResourceAccessPolicy(allow_remote=False, base_dir=diagram.parent, extra_roots=(FONTS,))
    output, messages = io.BytesIO(), io.StringIO()
    handler = logging.StreamHandler(messages)
    logger = logging.getLogger("xhtml2pdf")
    logger.addHandler(handler)
    try:
        status = pisa.CreatePDF(markup, dest=output, encoding="utf-8", resource_policy=policy)
    finally:
        logger.removeHandler(handler)
    if status.err:
        raise UserError(f"the PDF could not be rendered: {messages.getvalue().strip()[:500]}")
    return output.getvalue()
