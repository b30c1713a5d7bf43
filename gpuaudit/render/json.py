"""``--format json``: the report contract, pretty-printed (never NaN: nulls instead)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
