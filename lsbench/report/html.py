"""Render report sections as one self-contained HTML page (jinja2, autoescaped)."""

from __future__ import annotations

from datetime import datetime, timezone

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

import lsbench
from lsbench.measure.flops import CONVENTION as FLOP_CONVENTION
from lsbench.report.views import Section


def _environment() -> Environment:
    # autoescape=True: every string from a suite, run.json or results file is escaped.
    return Environment(loader=PackageLoader("lsbench.report", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False)


def render_html(sections: list[Section], title: str) -> str:
    for s in sections:
        for p in s.plots:
            # Made by matplotlib, which XML-escapes every text it draws (plots.label keeps
            # names literal); inline_svg only strips the prolog, comments and unused ids.
            p.svg = Markup(p.svg)
    template = _environment().get_template("report.html.j2")
    return template.render(
        sections=sections,
        title=title,
        version=lsbench.__version__,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        has_latency=any(s.kind == "run" for s in sections),
        has_extrapolation=any(s.kind == "extrapolate" for s in sections),
        flop_convention=FLOP_CONVENTION,
    )
