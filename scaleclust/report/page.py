"""Render index.html from the Jinja2 template (autoescaped) with the report's data inlined as JSON."""
from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

# Characters that could end the <script> element or confuse an HTML parser, as JSON escapes.
_SCRIPT_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                   0x2028: "\\u2028", 0x2029: "\\u2029"}


def script_json(payload: Any) -> Markup:
    """JSON safe to place inside <script type="application/json">: no '<', '>' or '&' survives."""
    return Markup(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).translate(_SCRIPT_ESCAPES))


def csp_hash(text: str) -> str:
    """The Content-Security-Policy source that allows exactly this inline script or style."""
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _asset(name: str) -> str:
    return resources.files("scaleclust.report").joinpath("templates", name).read_text()


def render(context: dict[str, Any]) -> str:
    """The page: overview `sections`, `plots`, and `data` (clusters) rendered client-side."""
    env = Environment(loader=PackageLoader("scaleclust.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    script, style = _asset("report.js"), _asset("report.css")
    return env.get_template("index.html.j2").render(
        **context, data_json=script_json(context["data"]), script=Markup(script), style=Markup(style),
        script_hash=csp_hash(script), style_hash=csp_hash(style))
