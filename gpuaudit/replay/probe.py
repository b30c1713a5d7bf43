"""What replay records about the server before it starts (best effort; nothing here is required).

- ``/sim/config``: serve-sim's resolved configuration (absent on a real vLLM server: 404);
- ``/metrics``: vLLM's ``cache_config_info`` labels (block size, KV blocks, cache dtype,
  gpu_memory_utilization), parsed with ``gpuaudit.sources.vllm.parse_metrics``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def probe_server(base_url: str, *, timeout_s: float = 3.0, trust_env: bool = True) -> dict[str, Any]:
    """``{"server": {...}}`` (serve-sim) and/or ``{"cache_config": {...}}`` (any vLLM); {} when neither."""
    import httpx

    from gpuaudit.errors import ScrapeError
    from gpuaudit.sources.vllm import parse_metrics

    out: dict[str, Any] = {}
    with httpx.Client(timeout=timeout_s, trust_env=trust_env) as client:
        try:
            r = client.get(base_url + "/sim/config")
            if r.status_code == 200 and isinstance(r.json(), dict) and r.json().get("simulated"):
                out["server"] = r.json()
        except (httpx.HTTPError, ValueError):
            pass
        try:
            r = client.get(base_url + "/metrics")
            if r.status_code == 200:
                rows = parse_metrics(r.text, ts=datetime.now(UTC), endpoint=base_url + "/metrics")
                for row in rows:
                    cfg = row.values.get("cache_config_json")
                    if isinstance(cfg, str):
                        out["cache_config"] = json.loads(cfg)
                        break
        except (httpx.HTTPError, ValueError, ScrapeError):
            pass
    return out
