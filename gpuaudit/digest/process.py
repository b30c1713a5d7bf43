"""The process table's digest: which GPUs of which host ran a compute process in the file
(all the report asks of this table, :func:`~gpuaudit.analyze.tables.process_gpus`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def build(data: pa.Table) -> dict[str, Any] | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if data.num_rows == 0 or not {"ts", "host", "gpu_uuid"} <= set(data.column_names):
        return None
    pairs = data.select(["host", "gpu_uuid"]).group_by(["host", "gpu_uuid"]).aggregate([]).to_pylist()
    ts = data.column("ts").cast(pa.timestamp("ms", tz="UTC"), safe=False).cast(pa.int64())
    return {
        "table": "process",
        "first_ts": int(pc.min(ts).as_py()),
        "last_ts": int(pc.max(ts).as_py()),
        "pairs": sorted([str(p["host"]), str(p["gpu_uuid"])] for p in pairs if p["gpu_uuid"] and p["host"]),
    }
