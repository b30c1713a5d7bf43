"""The `gpuaudit check --format` choices, in a module of their own so that registering the
command (at every `gpuaudit` start) does not import the renderers."""

from __future__ import annotations

from enum import StrEnum


class CheckFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
