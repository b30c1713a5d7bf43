"""Report renderers: ``FORMATS[Format.X](report_dict) -> str``, one per ``--format``.

Each renderer takes the JSON contract (``Report.to_dict()``, or a saved report JSON) and
is imported only when used, so importing this package stays cheap.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from gpuaudit.errors import ConfigError

Renderer = Callable[[Mapping[str, Any]], str]


class Format(StrEnum):
    table = "table"
    json = "json"
    markdown = "markdown"
    html = "html"


def _table(report: Mapping[str, Any]) -> str:
    from gpuaudit.render.table import render_table

    return render_table(report)


def _json(report: Mapping[str, Any]) -> str:
    from gpuaudit.render.json import render_json

    return render_json(report)


def _markdown(report: Mapping[str, Any]) -> str:
    from gpuaudit.render.markdown import render_markdown

    return render_markdown(report)


def _html(report: Mapping[str, Any]) -> str:
    try:
        from gpuaudit.render.html import render_html
    except ImportError as exc:
        raise ConfigError(
            f"--format html is not available: {exc}", hint="use --format table|json|markdown"
        ) from None
    return render_html(report)


FORMATS: dict[Format, Renderer] = {
    Format.table: _table,
    Format.json: _json,
    Format.markdown: _markdown,
    Format.html: _html,
}


def write_output(text: str, path: Path | None) -> None:
    """Write to ``path`` (atomically: a failed run leaves no file) or to stdout."""
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write {path}: {exc.strerror or exc}", hint="check the --output path"
        ) from None
