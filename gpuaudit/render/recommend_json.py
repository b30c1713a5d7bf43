"""The recommendation as a JSON contract (``schema_version`` 1); the table and Markdown renderers
read this dict, so all three formats show the same numbers."""

from __future__ import annotations

import json
import math
import platform
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gpuaudit import __version__

if TYPE_CHECKING:
    from gpuaudit.recommend.recommender import Recommendation

RECOMMEND_SCHEMA_VERSION = 1
LABEL = "simulated prediction"


def metadata(kind: str, generated_at: datetime | None = None) -> dict[str, Any]:
    return {
        "schema_version": RECOMMEND_SCHEMA_VERSION,
        "kind": kind,
        "gpuaudit_version": __version__,
        "python": platform.python_version(),
        "platform": sys.platform,
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(timespec="seconds"),
    }


def recommendation_dict(rec: Recommendation, *, generated_at: datetime | None = None) -> dict[str, Any]:
    s = rec.search
    best = rec.recommended
    recommended = None
    if best is not None and rec.advice is not None:
        a = rec.advice
        recommended = best.to_dict() | {
            "vllm_serve": a.command,
            "argv": list(a.argv),
            "checkpoint_note": a.checkpoint_note,
            "replicas_note": a.replicas_note,
            "why": list(a.why),
            "savings_usd_per_month": _r(a.savings_usd_per_month),
            "savings_frac": _r(a.savings_frac, 4),
        }
    current = None
    if rec.current is not None:
        current = rec.current.summary() | (rec.current_costed.to_dict() if rec.current_costed else {})
    return metadata("recommendation", generated_at) | {
        "label": LABEL,
        "model": rec.model_id,
        "workload": rec.workload.summary(),
        "current": current,
        "calibration": rec.calibration.to_dict(),
        "slo": {
            "p95_ttft_ms": rec.slo.ttft_p95_ms,
            "p95_tpot_ms": rec.slo.tpot_p95_ms,
            "source": rec.slo_source,
        },
        "recommended": recommended,
        "top": [c.to_dict() for c in rec.ranked],
        "near_misses": [c.to_dict() for c in rec.near_misses],
        "search": {
            "candidates": rec.candidates,
            "simulated_configurations": s.simulations,
            "derived_configurations": s.derived,
            "elapsed_s": round(s.elapsed_s, 2),
            "skipped_bases": len(s.skipped),
            "pruned": [{"what": p.what, "reason": p.reason} for p in rec.pruned],
        },
        "consolidation": rec.consolidation,
        "notes": rec.notes,
    }


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def render_json(data: dict[str, Any]) -> str:
    """``data``: ``recommendation_dict(rec)``."""
    return json.dumps(data, indent=2, default=str) + "\n"
