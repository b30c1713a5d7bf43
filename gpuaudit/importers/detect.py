"""Detect the format of an input file from its content (never from its extension)."""

from __future__ import annotations

import re

from gpuaudit.importers.nvidia_smi import header_fields

NVIDIA_SMI = "nvidia-smi"
EXPOSITION = "exposition"  # refined to "openmetrics" or "scrape" once parsed
PROM_JSON = "prometheus-json"

_SAMPLE_LINE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?[ \t]+\S+([ \t]+\S+)?[ \t]*$")


def detect_format(text: str) -> str | None:
    """``nvidia-smi``, ``exposition``, ``prometheus-json``, or None when unknown."""
    head = text.lstrip("\ufeff \t\r\n")
    if not head:
        return None
    if head[0] in "{[":
        return PROM_JSON
    lines = [line.strip() for line in head[:65536].splitlines() if line.strip()]
    if header_fields(lines[0]) is not None:
        return NVIDIA_SMI
    for line in lines[:200]:
        if line.startswith(("# TYPE ", "# HELP ", "# EOF")):
            return EXPOSITION
        if line.startswith("#"):
            continue
        return EXPOSITION if _SAMPLE_LINE.match(line) else None
    return None
