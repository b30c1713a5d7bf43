"""Which GPUs each vLLM engine ran on, and what they cost it.

Rules, strongest first:

1. ``config``: ``engines:`` in ``gpuaudit.yaml`` maps ``"host|endpoint"`` (exact) or a model
   name glob (first match, in file order) to GPU UUIDs.
2. ``process``: when the host has NVML process rows in the window, the engines on that host
   share the GPUs that ran a compute process (``/metrics`` names no GPU or PID, so several
   engines on one host cannot be told apart: they share).
3. ``host``: otherwise the engines on a host share all its GPUs (MIG instances instead of
   their parent). With one engine, it gets them all.

A GPU claimed by n engines gives each 1/n of its cost. A MIG instance costs its parent's
cost divided by the parent's instances seen. ``usd_per_1m_output_tokens`` = cost ÷
generation tokens x 10⁶ (None without tokens or without a priced GPU).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuaudit.analyze.gpus import GpuRow

EngineKey = tuple[str, str, str]


@dataclass(frozen=True)
class Attribution:
    gpu_uuids: tuple[str, ...]
    method: str  # "config" | "process" | "host" | "none"
    cost_usd: float | None
    gpu_util_mean_pct: float | None  # time-weighted over its GPUs


def config_gpus(key: EngineKey, mapping: Mapping[str, Sequence[str]]) -> tuple[str, ...] | None:
    host, endpoint, model = key
    exact = mapping.get(f"{host}|{endpoint}")
    if exact is not None:
        return tuple(exact)
    for pattern, uuids in mapping.items():
        if "|" not in pattern and fnmatch.fnmatchcase(model, pattern):
            return tuple(uuids)
    return None


def _gpu_costs(gpus: Sequence[GpuRow]) -> dict[str, float | None]:
    """The cost each GPU UUID brings to an engine: its own, or its MIG parent's share."""
    by_uuid = {g.uuid: g for g in gpus}
    instances: dict[str, int] = {}
    for g in gpus:
        if g.parent_uuid:
            instances[g.parent_uuid] = instances.get(g.parent_uuid, 0) + 1
    out: dict[str, float | None] = {}
    for g in gpus:
        if g.charged and not g.mig:
            out[g.uuid] = g.cost_usd
        elif g.mig:
            parent = by_uuid.get(g.parent_uuid or "")
            if parent is not None and parent.cost_usd is not None:
                out[g.uuid] = parent.cost_usd / instances[parent.uuid]
            else:  # a stand-in carries the whole parent; its siblings bring nothing more
                out[g.uuid] = g.cost_usd if g.charged else (0.0 if parent is None else None)
    return out


def _host_gpus(host: str, gpus: Sequence[GpuRow]) -> list[str]:
    mine = [g for g in gpus if g.host == host]
    parents = {g.parent_uuid for g in mine if g.parent_uuid}
    return [g.uuid for g in mine if g.uuid not in parents]


def attribute(
    engines: Sequence[EngineKey],
    gpus: Sequence[GpuRow],
    process_gpus: set[tuple[str, str]],
    mapping: Mapping[str, Sequence[str]],
) -> dict[EngineKey, Attribution]:
    claims: dict[EngineKey, tuple[tuple[str, ...], str]] = {}
    configured: dict[str, set[str]] = {}  # host -> uuids claimed through the config
    for key in engines:
        uuids = config_gpus(key, mapping)
        if uuids is not None:
            claims[key] = (uuids, "config")
            configured.setdefault(key[0], set()).update(uuids)
    hosts_with_processes = {h for h, _ in process_gpus}
    for key in engines:
        if key in claims:
            continue
        host = key[0]
        taken = configured.get(host, set())
        if host in hosts_with_processes:
            uuids = tuple(u for u in _host_gpus(host, gpus) if (host, u) in process_gpus and u not in taken)
            method = "process"
        else:
            uuids = tuple(u for u in _host_gpus(host, gpus) if u not in taken)
            method = "host"
        claims[key] = (uuids, method if uuids else "none")
    claimants: dict[str, int] = {}
    for uuids, _ in claims.values():
        for u in set(uuids):
            claimants[u] = claimants.get(u, 0) + 1
    costs = _gpu_costs(gpus)
    by_uuid: dict[str, list[GpuRow]] = {}
    for g in gpus:
        by_uuid.setdefault(g.uuid, []).append(g)
    out = {}
    for key, (uuids, method) in claims.items():
        rows = []
        for u in dict.fromkeys(uuids):  # a UUID on several hosts (synthetic keys): prefer the engine's host
            found = by_uuid.get(u, [])
            same = [g for g in found if g.host == key[0]]
            if same or found:
                rows.append((same or found)[0])
        priced = [costs[g.uuid] / claimants[g.uuid] for g in rows if costs.get(g.uuid) is not None]  # type: ignore[operator]
        out[key] = Attribution(
            gpu_uuids=tuple(dict.fromkeys(uuids)),
            method=method,
            cost_usd=sum(priced) if priced else None,
            gpu_util_mean_pct=_util(rows),
        )
    return out


def _util(gpus: Sequence[GpuRow]) -> float | None:
    known = [
        (g.util_mean_pct, g.gpu_hours * (1 - (g.unknown_frac or 0.0)))
        for g in gpus
        if g.util_mean_pct is not None
    ]
    weight = sum(w for _, w in known)
    return sum(u * w for u, w in known) / weight if weight > 0 else None
