"""dcgm-exporter families → rows of the ``gpu`` table.

One row per (host, GPU key, timestamp): the families of one scrape merge into one row.
The GPU key is the ``UUID`` label (``uuid`` under ``--use-old-namespace``); a MIG instance
(``GPU_I_ID`` label) is keyed ``<UUID>/gi<GPU_I_ID>`` with ``parent_uuid`` = the UUID, as
dcgm-exporter prints no MIG UUID. Without a UUID the key is ``<host>:gpu<gpu label>``.
Host: the ``--host`` option, else the ``--host-label`` label when the series has it, else the
``Hostname``/``hostname`` label, else the host part of ``instance``, else a fallback (the file
name). DCGM blank sentinels (≥ 2^63 - 16) are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from gpuaudit.importers.times import from_epoch_s
from gpuaudit.sources.promtext import PromSample

MIB = 1024 * 1024
DCGM_BLANK_MIN = 9223372036854775792  # DCGM_INT64_BLANK; +1..+3: not found / not supported / no permission

# family -> (gpu column, scale, integer column?)
FAMILIES: dict[str, tuple[str, float, bool]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("util_gpu_pct", 1.0, False),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("util_mem_pct", 1.0, False),
    "DCGM_FI_DEV_FB_USED": ("mem_used_bytes", MIB, True),
    "DCGM_FI_DEV_FB_FREE": ("_fb_free_bytes", MIB, True),
    "DCGM_FI_DEV_FB_RESERVED": ("_fb_reserved_bytes", MIB, True),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0, False),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("power_limit_w", 1.0, False),
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": ("power_limit_w", 1.0, False),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_mj", 1.0, True),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0, True),
    "DCGM_FI_DEV_MEM_CLOCK": ("mem_clock_mhz", 1.0, True),
    "DCGM_FI_DEV_GPU_TEMP": ("temp_c", 1.0, True),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("clock_event_reasons", 1.0, True),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("clock_event_reasons", 1.0, True),
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_active_pct", 100.0, False),
    "DCGM_FI_PROF_SM_OCCUPANCY": ("sm_occupancy_pct", 100.0, False),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("tensor_active_pct", 100.0, False),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("dram_bw_util_pct", 100.0, False),
    "DCGM_FI_PROF_PCIE_TX_BYTES": ("pcie_tx_kb_per_s", 1 / 1000, True),
    "DCGM_FI_PROF_PCIE_RX_BYTES": ("pcie_rx_kb_per_s", 1 / 1000, True),
}


def family(name: str) -> str | None:
    """The mapped DCGM family of a sample name (``…_total`` added by some tools is accepted)."""
    if name in FAMILIES:
        return name
    if name.endswith("_total") and name[:-6] in FAMILIES:
        return name[:-6]
    return None


def host_of(
    labels: Mapping[str, str], *, override: str | None, fallback: str, label: str | None = None
) -> str:
    """``override``, else ``labels[label]``, else Hostname/hostname, else instance's host, else ``fallback``.

    The label value is kept as it is (the store escapes partition values).
    """
    if override:
        return override
    if label:
        chosen = labels.get(label)
        if chosen:
            return chosen
    named = labels.get("Hostname") or labels.get("hostname")
    if named:
        return named
    instance = labels.get("instance", "")
    if instance:
        return instance.rsplit(":", 1)[0] if instance.count(":") == 1 or "]" in instance else instance
    return fallback


def _identity(labels: Mapping[str, str], host: str) -> tuple[str, dict[str, object]]:
    index = labels.get("gpu", "")
    ident: dict[str, object] = {"gpu_index": int(index) if index.isdigit() else None}
    if labels.get("modelName"):
        ident["gpu_name"] = labels["modelName"]
    uuid = labels.get("UUID") or labels.get("uuid") or f"{host}:gpu{index or '?'}"
    gi = labels.get("GPU_I_ID", "")
    if gi.isdigit():
        ident.update(parent_uuid=uuid, mig_gi_id=int(gi))
        uuid = f"{uuid}/gi{gi}"
    return uuid, ident


class _Identities:
    """host, GPU key and identity columns per label set; parsers share label mappings between
    the samples of a series, so this is looked up by object identity (the mapping is kept alive)."""

    def __init__(self, host: str | None, fallback_host: str, host_label: str | None) -> None:
        self.host, self.fallback, self.label = host, fallback_host, host_label
        self.cache: dict[int, tuple[Mapping[str, str], str, str, dict[str, object]]] = {}

    def get(self, labels: Mapping[str, str]) -> tuple[str, str, dict[str, object]]:
        hit = self.cache.get(id(labels))
        if hit is None or hit[0] is not labels:
            h = host_of(labels, override=self.host, fallback=self.fallback, label=self.label)
            hit = self.cache[id(labels)] = (labels, h, *_identity(labels, h))
        return hit[1], hit[2], hit[3]


def gpu_rows(
    samples: Iterable[PromSample],
    *,
    source: str,
    host: str | None,
    fallback_host: str,
    default_ts_s: float | None = None,
    host_label: str | None = None,
) -> list[dict[str, object]]:
    """Merge the DCGM samples into ``gpu`` rows; samples of unmapped families are ignored.

    ``default_ts_s`` is the time of samples that carry no timestamp (a scrape and ``--at``).
    ``host_label``: the label whose value is the host, where a series has it (``--host-label``).
    """
    rows: dict[tuple[str, str, int], dict[str, object]] = {}
    identities = _Identities(host, fallback_host, host_label)
    for s in samples:
        fam = family(s.name)
        value = s.value
        if fam is None or not math.isfinite(value) or value >= DCGM_BLANK_MIN:
            continue
        ts_s = s.timestamp_s if s.timestamp_s is not None else default_ts_s
        if ts_s is None:
            raise ValueError(f"sample {s.name} has no timestamp")  # callers check this first
        h, uuid, ident = identities.get(s.labels)
        key = (h, uuid, round(ts_s * 1000))
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "ts": from_epoch_s(key[2] / 1000),
                "host": h,
                "source": source,
                "gpu_uuid": uuid,
            }
            row.update(ident)
        elif row.get("gpu_name") is None or row.get("gpu_index") is None:
            for k, v in ident.items():  # another family's labels may name what the first lacked
                if row.get(k) is None:
                    row[k] = v
        column, scale, integer = FAMILIES[fam]
        value *= scale
        row[column] = round(value) if integer else (value if scale == 1.0 else round(value, 9))
    return [_finish(rows[k]) for k in sorted(rows)]


def _finish(row: dict[str, object]) -> dict[str, object]:
    """memory total = FB_USED + FB_FREE (+ FB_RESERVED when exported), as dcgm-exporter defines it."""
    free = row.pop("_fb_free_bytes", None)
    reserved = row.pop("_fb_reserved_bytes", None)
    used = row.get("mem_used_bytes")
    if isinstance(used, int) and isinstance(free, int):
        row["mem_total_bytes"] = used + free + (reserved if isinstance(reserved, int) else 0)
    return row
