"""The simulated GPU backend: scenario properties, physics consistency, determinism, load coupling."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta

import pytest

from gpuaudit.errors import ConfigError
from gpuaudit.schema import GPU_COLUMNS, gpu_schema
from gpuaudit.sources.base import GpuBackend
from gpuaudit.sources.simulated import GPU_IDLE, SCENARIOS, SimulatedBackend

T0 = datetime(2025, 6, 3, 14, 0, 0, tzinfo=UTC)
UUID_RE = re.compile(r"^(GPU|MIG)-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def run(backend: SimulatedBackend, seconds: int, step_s: float = 1.0, start: datetime = T0):
    """Sample for `seconds`; returns {tick: {uuid: row}}."""
    out = {}
    for k in range(int(seconds / step_s)):
        now = start + timedelta(seconds=k * step_s)
        out[k] = {r.gpu_uuid: r for r in backend.sample(now)}
    return out


def by_index(backend: SimulatedBackend) -> dict[int, str]:
    return {d.index: d.uuid for d in backend.devices() if d.parent_uuid is None}


def test_protocol_and_devices():
    b: GpuBackend = SimulatedBackend(6, seed=3)
    devs = b.devices()
    assert b.name == "simulated"
    assert len([d for d in devs if d.parent_uuid is None]) == 6
    assert all(UUID_RE.match(d.uuid) for d in devs)
    assert len({d.uuid for d in devs}) == len(devs)
    assert all(
        d.gpm_supported and d.mem_total_bytes == 81_559 * 1024**2 for d in devs if d.parent_uuid is None
    )


def test_busy_gpu_high_util_but_low_sm_activity():
    b = SimulatedBackend(1, seed=1)
    rows = [t[by_index(b)[0]] for t in run(b, 60).values()]
    for r in rows:
        assert 85 <= r.util_gpu_pct <= 100
        assert 30 <= r.sm_active_pct <= 50 < r.util_gpu_pct  # GPM shows what util hides
        assert 400 <= r.power_w <= 650 and r.power_limit_w == 700.0
        assert r.sm_clock_mhz >= 1900 and not r.clock_event_reasons & GPU_IDLE
        assert r.mem_used_bytes / r.mem_total_bytes > 0.85  # ~73 GB held
    assert len({r.util_gpu_pct for r in rows}) > 5  # noisy, not constant


def test_idle_held_and_idle_empty():
    b = SimulatedBackend(3, seed=2)
    idx = by_index(b)
    for tick in run(b, 30).values():
        held, empty = tick[idx[1]], tick[idx[2]]
        for r in (held, empty):
            assert r.util_gpu_pct == 0 and r.sm_active_pct == 0
            assert r.clock_event_reasons & GPU_IDLE and r.sm_clock_mhz == 345
            assert 60 <= r.power_w <= 80  # ~70 W idle
        assert held.mem_used_bytes >= 0.05 * held.mem_total_bytes
        assert empty.mem_used_bytes < 0.05 * empty.mem_total_bytes


def test_mig_parent_and_instance_rows():
    b = SimulatedBackend(4, seed=4)
    parent = by_index(b)[3]
    instances = [d for d in b.devices() if d.parent_uuid == parent]
    assert len(instances) == 3 and all(d.uuid.startswith("MIG-") for d in instances)
    assert len({d.mig_gi_id for d in instances}) == 3
    tick = run(b, 2)[1]
    assert tick[parent].util_gpu_pct is None and tick[parent].power_w is not None
    rows = [tick[d.uuid] for d in instances]
    assert all(r.parent_uuid == parent and r.util_gpu_pct is None and r.gpu_index == 3 for r in rows)
    assert all(r.sm_active_pct is not None for r in rows) and max(r.sm_active_pct for r in rows) > 20
    assert sum(r.mem_used_bytes for r in rows) == tick[parent].mem_used_bytes <= tick[parent].mem_total_bytes
    ev = [e for e in b.drain_events() if e.kind == "field_unsupported"]
    assert sorted(e.subject for e in ev) == sorted([parent, *(d.uuid for d in instances)])


def test_unsupported_fields_are_null_not_zero_with_one_event_each():
    b = SimulatedBackend(5, seed=5)
    uuid = by_index(b)[4]
    ticks = run(b, 20)
    for tick in ticks.values():
        r = tick[uuid]
        assert r.energy_mj is None and r.pcie_tx_kb_per_s is None and r.pcie_rx_kb_per_s is None
        assert r.power_w is not None and r.util_gpu_pct is not None
    ev = [e for e in b.drain_events() if e.subject == uuid]
    assert [(e.kind, e.detail.split(":")[0]) for e in ev] == [
        ("field_unsupported", "energy"),
        ("field_unsupported", "pcie"),
    ]
    run(b, 5, start=T0 + timedelta(minutes=1))
    assert [e for e in b.drain_events() if e.subject == uuid] == []


def test_lost_gpu_disappears_with_one_event():
    b = SimulatedBackend(6, seed=6, lose_gpu_after_s=10)
    uuid = by_index(b)[5]
    ticks = run(b, 30)
    present = [k for k, t in ticks.items() if uuid in t]
    assert present == list(range(10))
    assert all(len(t) == (8 if k >= 10 else 9) for k, t in ticks.items())  # others keep reporting
    lost = [e for e in b.drain_events() if e.kind == "gpu_lost"]
    assert [(e.subject, e.ts) for e in lost] == [(uuid, T0 + timedelta(seconds=10))]
    assert uuid not in {p.gpu_uuid for p in b.processes(T0 + timedelta(seconds=30))}


def test_lose_gpu_disabled():
    b = SimulatedBackend(6, seed=6, lose_gpu_after_s=None)
    assert all(len(t) == 9 for t in run(b, 20).values())


def test_energy_monotone_and_consistent_with_power():
    b = SimulatedBackend(3, seed=7)
    ticks = run(b, 120, step_s=0.5)
    for uuid in by_index(b).values():
        rows = [t[uuid] for t in ticks.values()]
        energy = [r.energy_mj for r in rows]
        assert all(b2 >= a for a, b2 in itertools.pairwise(energy))
        trapezoid_mj = sum((a.power_w + c.power_w) / 2 * 0.5 * 1000 for a, c in itertools.pairwise(rows))
        assert energy[-1] - energy[0] == pytest.approx(trapezoid_mj, abs=len(rows))  # int truncation only
        mean_w = sum(r.power_w for r in rows) / len(rows)
        assert (energy[-1] - energy[0]) / 1000 / (0.5 * (len(rows) - 1)) == pytest.approx(mean_w, rel=0.02)


def test_deterministic_for_a_seed():
    a, b, c = SimulatedBackend(6, seed=11), SimulatedBackend(6, seed=11), SimulatedBackend(6, seed=12)
    ra, rb, rc = run(a, 15), run(b, 15), run(c, 15)
    assert ra == rb and a.drain_events() == b.drain_events()
    assert a.processes(T0) == b.processes(T0)
    assert set(ra[0]) != set(rc[0])
    # values depend on `now`, not on call history (energy aside)
    d = SimulatedBackend(6, seed=11, start=T0)
    late = {r.gpu_uuid: r for r in d.sample(T0 + timedelta(seconds=9))}
    assert set(late) == set(ra[9])
    for u, r in late.items():
        assert r.util_gpu_pct == ra[9][u].util_gpu_pct and r.power_w == ra[9][u].power_w


def test_set_load_drives_power_clocks_and_sm_activity():
    b = SimulatedBackend(4, seed=8)
    idx = by_index(b)
    b.set_load(2, 0.0)
    b.set_load(1, 100.0, mem_used_bytes=60 * 1024**3)
    b.set_load(0, 20.0)
    b.set_load(3, 80.0)  # the MIG GPU becomes one whole, driven GPU
    tick = run(b, 1)[0]
    assert set(tick) == set(idx.values())
    idle, full, low, high = (tick[idx[i]] for i in (2, 1, 0, 3))
    assert idle.util_gpu_pct == 0 and idle.clock_event_reasons & GPU_IDLE and idle.sm_clock_mhz == 345
    assert idle.power_w < 80 and idle.sm_active_pct == 0
    assert full.util_gpu_pct == 100 and full.power_w >= 600 and full.sm_clock_mhz >= 1940
    assert full.mem_used_bytes == 60 * 1024**3 and 40 <= full.sm_active_pct <= 50
    assert idle.power_w < low.power_w < high.power_w < full.power_w
    assert low.sm_active_pct < high.sm_active_pct < full.sm_active_pct
    assert low.mem_used_bytes == run(SimulatedBackend(1, seed=8), 1)[0][idx[0]].mem_used_bytes  # kept


def test_set_load_validation_and_clear():
    b = SimulatedBackend(2, seed=9)
    for args in ((2, 50.0), (-1, 50.0), (0, 101.0), (0, -1.0), (0, 50.0, 10**15)):
        with pytest.raises(ConfigError):
            b.set_load(*args)
    b.set_load(1, 90.0)
    assert run(b, 1)[0][by_index(b)[1]].util_gpu_pct == 90.0
    b.clear_load(1)
    assert run(b, 1)[0][by_index(b)[1]].util_gpu_pct == 0.0


def test_processes_on_busy_and_held_gpus_only():
    b = SimulatedBackend(4, seed=10)
    idx = by_index(b)
    procs = {p.gpu_uuid: p for p in b.processes(T0)}
    assert idx[0] in procs and idx[1] in procs and idx[2] not in procs
    assert procs[idx[0]].pid > 0 and procs[idx[0]].used_mem_bytes > 0 and procs[idx[0]].process_name
    mig = [p for p in procs.values() if p.gpu_uuid.startswith("MIG-")]
    assert mig and all(p.used_mem_bytes is None for p in mig)  # N/A on MIG


def test_more_gpus_repeat_patterns_and_other_models():
    b = SimulatedBackend(9, seed=1, lose_gpu_after_s=None)
    tick = run(b, 1)[0]
    idx = by_index(b)
    assert tick[idx[6]].util_gpu_pct >= 85 and tick[idx[7]].util_gpu_pct == 0
    assert len(SCENARIOS) == 6
    a100 = SimulatedBackend(2, gpu_name="NVIDIA A100-SXM4-80GB")
    r = run(a100, 2)[1][by_index(a100)[0]]
    assert r.sm_active_pct is None and r.power_limit_w == 400.0 and r.gpu_name == "NVIDIA A100-SXM4-80GB"


def test_rows_fit_the_gpu_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    b = SimulatedBackend(6, seed=1, lose_gpu_after_s=1)
    rows = [r.row(host="h1", source=b.name) for t in run(b, 3).values() for r in t.values()]
    assert set(rows[0]) == set(GPU_COLUMNS)
    table = pa.Table.from_pylist(rows, schema=gpu_schema())
    pq.write_table(table, tmp_path / "gpu.parquet")
    back = pq.read_table(tmp_path / "gpu.parquet").to_pylist()
    assert len(back) == len(rows) and back[0]["source"] == "simulated"
    assert sum(r["energy_mj"] is None for r in back) >= 3  # NULLs survive, not 0
