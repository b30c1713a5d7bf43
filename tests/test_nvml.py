"""The real NVML adapter (gpuaudit.sources.nvml) against FakeNvml, which raises pynvml's own errors."""

from __future__ import annotations

import ctypes
import math
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pynvml
import pytest

from gpuaudit.errors import NvmlUnavailable
from gpuaudit.sources import nvml
from gpuaudit.sources.nvml import NvmlBackend, check_binding
from tests.fake_nvml import FakeMig, FakeNvml, MiB, err, h100, install

T0 = datetime(2025, 6, 3, 14, 21, 7, tzinfo=UTC)
NAMES = {4242: "python3"}


@pytest.fixture
def fake(monkeypatch):
    return install(monkeypatch, FakeNvml([h100(0), h100(1)]))


def open_backend(fake: FakeNvml, **kw) -> NvmlBackend:
    return NvmlBackend.open(clock=fake.clock, read_comm=NAMES.get, wall_clock=lambda: T0, **kw)


class Ticker:
    """Advances the fake monotonic clock and the wall clock together."""

    def __init__(self, backend: NvmlBackend, fake: FakeNvml) -> None:
        self.backend, self.fake, self.now = backend, fake, T0

    def __call__(self, dt_s: float = 1.0):
        self.fake.time += dt_s
        self.now += timedelta(seconds=dt_s)
        return {r.gpu_uuid: r for r in self.backend.sample(self.now)}


def kinds(events):
    return [(e.kind, e.subject) for e in events]


# -- discovery, values, units -----------------------------------------------------------------------


def test_discovers_gpus_by_uuid(fake):
    b = open_backend(fake)
    devs = b.devices()
    assert [d.uuid for d in devs] == [g.uuid for g in fake.gpus]
    assert [d.index for d in devs] == [0, 1]
    assert all(d.name == "NVIDIA H100 80GB HBM3" and d.gpm_supported and d.parent_uuid is None for d in devs)
    assert devs[0].mem_total_bytes == fake.gpus[0].mem_total
    assert b.name == "nvml"


def test_h100_values_and_unit_conversions(fake):
    b = open_backend(fake)
    rows = Ticker(b, fake)()
    g = fake.gpus[0]
    r = rows[g.uuid]
    assert r.ts == T0 + timedelta(seconds=1)
    assert (r.gpu_index, r.gpu_name) == (0, g.name)
    assert (r.util_gpu_pct, r.util_mem_pct) == (g.util_gpu, g.util_mem)
    assert r.mem_used_bytes == g.mem_used  # v2: reserved memory is not counted as used
    assert r.mem_total_bytes == 81_559 * MiB
    assert r.power_w == pytest.approx(g.power_mw / 1000) and r.power_w == pytest.approx(454.67)
    assert r.power_limit_w == pytest.approx(700.0)
    assert r.energy_mj == g.energy_mj
    assert (r.sm_clock_mhz, r.mem_clock_mhz, r.temp_c) == (g.sm_clock, g.mem_clock, g.temp_c)
    assert r.clock_event_reasons == 0
    assert (r.pcie_tx_kb_per_s, r.pcie_rx_kb_per_s) == (g.pcie_tx_kb, g.pcie_rx_kb)
    assert r.sm_active_pct is None  # GPM needs two samples
    assert b.drain_events() == []


def test_one_call_per_field_per_tick_and_power_limit_reread(fake):
    b = open_backend(fake)
    tick = Ticker(b, fake)
    uuid = fake.gpus[0].uuid
    tick()
    tick()
    for fn in (
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetCurrentClocksEventReasons",
    ):
        assert fake.count(fn, uuid) == 2, fn
    assert fake.count("nvmlDeviceGetClockInfo", uuid) == 4  # SM + MEM
    assert fake.count("nvmlDeviceGetPcieThroughput", uuid) == 4  # TX + RX
    assert fake.count("nvmlDeviceGetEnforcedPowerLimit", uuid) == 1
    fake.gpus[0].limit_mw = 500_000
    assert tick(nvml.POWER_LIMIT_REREAD_S)[uuid].power_limit_w == pytest.approx(500.0)
    assert fake.count("nvmlDeviceGetEnforcedPowerLimit", uuid) == 2


def test_idle_bit_passes_through(fake):
    fake.gpus[1].reasons = 0x1
    fake.gpus[1].util_gpu = 0
    r = Ticker(open_backend(fake), fake)()[fake.gpus[1].uuid]
    assert r.clock_event_reasons & 0x1 and r.util_gpu_pct == 0.0


# -- GPM ----------------------------------------------------------------------------------------------


def test_gpm_two_sample_rule(fake):
    b = open_backend(fake)
    tick = Ticker(b, fake)
    uuid = fake.gpus[0].uuid
    assert tick()[uuid].sm_active_pct is None  # first tick after start: only `prev` exists
    r = tick()[uuid]
    g = fake.gpus[0]
    assert (r.sm_active_pct, r.sm_occupancy_pct, r.tensor_active_pct, r.dram_bw_util_pct) == (
        g.gpm[2],
        g.gpm[3],
        g.gpm[5],
        g.gpm[10],
    )
    g.gpm[2] = 77.0
    assert tick()[uuid].sm_active_pct == 77.0  # buffers swapped in the right order (else InvalidArgument)
    gets = fake.count("nvmlGpmSampleGet", uuid)
    g.gpm[2] = 12.0
    assert tick(0.05)[uuid].sm_active_pct == 77.0  # <= 100 ms after the last sample: reused
    assert fake.count("nvmlGpmSampleGet", uuid) == gets
    assert tick(0.2)[uuid].sm_active_pct == 12.0
    assert fake.too_close == 0
    assert fake.count("nvmlGpmSampleAlloc") == 4  # two per GPU
    b.close()
    assert fake.live_bufs == {} and len(fake.freed) == 4


def test_gpm_per_metric_failure_and_nan_are_null(fake):
    fake.gpus[0].gpm_returns[10] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[0].gpm[5] = math.nan
    tick = Ticker(open_backend(fake), fake)
    tick()
    r = tick()[fake.gpus[0].uuid]
    assert r.dram_bw_util_pct is None and r.tensor_active_pct is None
    assert r.sm_active_pct == fake.gpus[0].gpm[2]


def test_gpm_not_queried_on_unsupported_gpu(monkeypatch):
    fake = install(monkeypatch, FakeNvml([h100(0, name="NVIDIA A100-SXM4-80GB", gpm_supported=False)]))
    b = open_backend(fake)
    tick = Ticker(b, fake)
    tick()
    assert tick()[fake.gpus[0].uuid].sm_active_pct is None
    assert fake.count("nvmlGpmSampleGet") == 0 and fake.count("nvmlGpmSampleAlloc") == 0
    assert not b.devices()[0].gpm_supported


# -- MIG ----------------------------------------------------------------------------------------------


def mig_fake(monkeypatch) -> FakeNvml:
    migs = [
        FakeMig(slot=0, uuid="MIG-aaaaaaaa-0000-5000-8000-000000000001", gi_id=1, ci_id=0),
        FakeMig(slot=2, uuid="MIG-aaaaaaaa-0000-5000-8000-000000000002", gi_id=5, ci_id=0,
                name="NVIDIA H100 80GB HBM3 MIG 2g.20gb", mem_total=20_096 * MiB, mem_used=0,
                gpm={2: 0.0, 3: 0.0, 5: 0.0, 10: 0.0}),
    ]  # fmt: skip
    parent = h100(0, mig=migs, errors={"nvmlDeviceGetUtilizationRates": err(pynvml.NVML_ERROR_NOT_SUPPORTED)})
    return install(monkeypatch, FakeNvml([parent, h100(1)]))


def test_mig_instances_are_rows_with_parent(monkeypatch):
    fake = mig_fake(monkeypatch)
    b = open_backend(fake)
    parent, migs = fake.gpus[0], fake.gpus[0].mig
    devs = {d.uuid: d for d in b.devices()}
    assert len(devs) == 4  # 2 GPUs + 2 instances; slot 1 (NotFound) skipped
    for m in migs:
        d = devs[m.uuid]
        assert (d.parent_uuid, d.mig_gi_id, d.mig_ci_id, d.index) == (parent.uuid, m.gi_id, m.ci_id, 0)
    tick = Ticker(b, fake)
    tick()
    rows = tick()
    p = rows[parent.uuid]
    assert p.util_gpu_pct is None and p.power_w == pytest.approx(parent.power_mw / 1000)
    for m in migs:
        r = rows[m.uuid]
        assert (r.parent_uuid, r.gpu_name, r.mig_gi_id) == (parent.uuid, m.name, m.gi_id)
        assert r.util_gpu_pct is None  # NotSupported on MIG
        assert (r.mem_used_bytes, r.mem_total_bytes) == (m.mem_used, m.mem_total)
        assert r.sm_active_pct == m.gpm[2]  # per-instance GPM via nvmlGpmMigSampleGet
        assert r.power_w is None and r.temp_c is None  # device-level fields live on the parent row
    assert fake.count("nvmlGpmMigSampleGet") == 4
    ev = b.drain_events()
    assert sorted(kinds(ev)) == sorted(
        ("field_unsupported", u) for u in (parent.uuid, *(m.uuid for m in migs))
    )
    assert all("util" in e.detail for e in ev)


def test_mig_processes_per_instance_and_lost_instance_drops_gpu(monkeypatch):
    fake = mig_fake(monkeypatch)
    fake.gpus[0].mig[0].procs = [(4242, None)]
    b = open_backend(fake)
    procs = b.processes(T0)
    assert [(p.gpu_uuid, p.pid, p.used_mem_bytes, p.process_name) for p in procs] == [
        (fake.gpus[0].mig[0].uuid, 4242, None, "python3")
    ]
    fake.gpus[0].lost = True
    rows = Ticker(b, fake)()
    assert set(rows) == {fake.gpus[1].uuid}
    assert kinds(b.drain_events()) == [("gpu_lost", fake.gpus[0].uuid)]


# -- error policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NO_PERMISSION])
def test_not_supported_is_null_cached_with_one_event(fake, code):
    bad = fake.gpus[1]
    bad.errors["nvmlDeviceGetPowerUsage"] = err(code)
    bad.errors["nvmlDeviceGetPcieThroughput"] = err(code)
    b = open_backend(fake)
    tick = Ticker(b, fake)
    for _ in range(3):
        rows = tick()
        assert rows[bad.uuid].power_w is None and rows[bad.uuid].pcie_rx_kb_per_s is None  # NULL, not 0
        assert rows[bad.uuid].sm_clock_mhz == bad.sm_clock
        assert rows[fake.gpus[0].uuid].power_w is not None
    assert fake.count("nvmlDeviceGetPowerUsage", bad.uuid) == 1  # never called again
    assert fake.count("nvmlDeviceGetPcieThroughput", bad.uuid) == 1  # TX failed: RX not tried
    ev = b.drain_events()
    assert kinds(ev) == [("field_unsupported", bad.uuid)] * 2
    assert ev[0].detail.startswith("power: NVML ") and "nvmlDeviceGetPowerUsage" in ev[0].detail
    assert ev[0].source == "nvml" and ev[0].ts == T0 + timedelta(seconds=1)
    assert b.drain_events() == []


def test_gpu_lost_stops_polling_other_gpus_continue(fake):
    b = open_backend(fake)
    tick = Ticker(b, fake)
    lost = fake.gpus[1]
    assert set(tick()) == {g.uuid for g in fake.gpus}
    lost.lost = True
    assert set(tick()) == {fake.gpus[0].uuid}
    calls = sum(n for (_, u), n in fake.calls.items() if u == lost.uuid)
    assert set(tick()) == {fake.gpus[0].uuid}
    assert sum(n for (_, u), n in fake.calls.items() if u == lost.uuid) == calls  # no more polling
    ev = b.drain_events()
    assert kinds(ev) == [("gpu_lost", lost.uuid)] and "GPU is lost" in ev[0].detail
    assert [p.gpu_uuid for p in b.processes(tick.now)] == []


def test_gpu_lost_at_startup_is_skipped_with_event(fake):
    fake.gpus[0].errors["nvmlDeviceGetUUID"] = err(pynvml.NVML_ERROR_GPU_IS_LOST)
    b = open_backend(fake)
    assert [d.uuid for d in b.devices()] == [fake.gpus[1].uuid]
    assert kinds(b.drain_events()) == [("gpu_lost", "index:0")]


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_UNKNOWN, pynvml.NVML_ERROR_INSUFFICIENT_SIZE])
def test_transient_errors_null_this_tick_retry_next(fake, code):
    g = fake.gpus[0]
    g.errors["nvmlDeviceGetTotalEnergyConsumption"] = err(code)
    b = open_backend(fake)
    tick = Ticker(b, fake)
    assert tick()[g.uuid].energy_mj is None
    del g.errors["nvmlDeviceGetTotalEnergyConsumption"]
    assert tick()[g.uuid].energy_mj == g.energy_mj
    assert fake.count("nvmlDeviceGetTotalEnergyConsumption", g.uuid) == 2
    assert b.drain_events() == []


def test_uninitialized_is_a_bug_and_raises(fake):
    b = open_backend(fake)
    fake.gpus[0].errors["nvmlDeviceGetPowerUsage"] = err(pynvml.NVML_ERROR_UNINITIALIZED)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        b.sample(T0)


def test_temperature_v_function_not_found_falls_back(fake, caplog):
    for g in fake.gpus:
        g.errors["nvmlDeviceGetTemperatureV"] = err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    b = open_backend(fake)
    tick = Ticker(b, fake)
    with caplog.at_level("INFO", logger="gpuaudit.sources.nvml"):
        for _ in range(3):
            assert [r.temp_c for r in tick().values()] == [g.temp_c for g in fake.gpus]
    assert fake.count("nvmlDeviceGetTemperatureV") == 2  # once per GPU, then the old call only
    assert fake.count("nvmlDeviceGetTemperature") == 6
    assert len([r for r in caplog.records if "temperature" in r.getMessage()]) == 1  # logged once
    assert b.drain_events() == []


def test_binding_without_temperature_v_falls_back(fake, monkeypatch):
    monkeypatch.delattr(pynvml, "nvmlDeviceGetTemperatureV")  # nvidia-ml-py 12.550.52
    rows = Ticker(open_backend(fake), fake)()
    assert [r.temp_c for r in rows.values()] == [g.temp_c for g in fake.gpus]


def test_memory_v2_missing_falls_back_to_v1(fake):
    g = fake.gpus[0]
    g.errors["nvmlDeviceGetMemoryInfo_v2"] = err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    rows = Ticker(open_backend(fake), fake)()
    assert rows[g.uuid].mem_used_bytes == g.mem_used + g.mem_reserved  # v1 counts reserved as used
    assert rows[fake.gpus[1].uuid].mem_used_bytes == fake.gpus[1].mem_used


def test_function_not_found_without_fallback_disables_field(fake):
    fake.global_errors["nvmlDeviceGetCurrentClocksEventReasons"] = err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    b = open_backend(fake)
    tick = Ticker(b, fake)
    tick()
    assert all(r.clock_event_reasons is None for r in tick().values())
    assert fake.count("nvmlDeviceGetCurrentClocksEventReasons") == 2
    assert [e.kind for e in b.drain_events()] == ["field_unsupported"] * 2


# -- processes --------------------------------------------------------------------------------------------


def test_processes_names_memory_and_cadence(fake):
    fake.gpus[0].procs = [(4242, 70_000 * MiB), (777, None)]
    b = open_backend(fake, process_interval_s=5.0)
    procs = b.processes(T0)
    assert [(p.gpu_uuid, p.pid, p.used_mem_bytes, p.process_name) for p in procs] == [
        (fake.gpus[0].uuid, 4242, 70_000 * MiB, "python3"),
        (fake.gpus[0].uuid, 777, None, None),
    ]
    fake.time += 2.0
    assert b.processes(T0) == []  # less than half the interval: not queried
    assert fake.count("nvmlDeviceGetComputeRunningProcesses") == 2
    fake.time += 2.999  # a scheduler tick that came early by a few ms is still served
    assert len(b.processes(T0)) == 2


def test_processes_not_found_is_empty_and_no_permission_is_cached(fake):
    fake.gpus[0].errors["nvmlDeviceGetComputeRunningProcesses"] = err(pynvml.NVML_ERROR_NOT_FOUND)
    fake.gpus[1].errors["nvmlDeviceGetComputeRunningProcesses"] = err(pynvml.NVML_ERROR_NO_PERMISSION)
    b = open_backend(fake, process_interval_s=0.0)
    assert b.processes(T0) == [] and b.processes(T0) == []
    assert fake.count("nvmlDeviceGetComputeRunningProcesses", fake.gpus[0].uuid) == 2
    assert fake.count("nvmlDeviceGetComputeRunningProcesses", fake.gpus[1].uuid) == 1
    assert kinds(b.drain_events()) == [("field_unsupported", fake.gpus[1].uuid)]


def test_read_comm_reads_proc():
    import os

    assert nvml._read_comm(os.getpid()) == Path("/proc/self/comm").read_text().strip()
    assert nvml._read_comm(2**22 + 12345) is None


# -- init, binding, close -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "hint_word"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "kernel driver"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "reboot"),
    ],
)
def test_init_failures_raise_nvml_unavailable(fake, code, hint_word):
    fake.init_error = err(code)
    with pytest.raises(NvmlUnavailable) as exc:
        open_backend(fake)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("NVML could not be initialised")
    assert hint_word in exc.value.hint


def test_import_error_raises_nvml_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NvmlUnavailable, match="cannot import pynvml") as exc:
        NvmlBackend.open()
    assert "nvidia-ml-py" in exc.value.hint


def test_unofficial_pynvml_distribution_is_rejected(monkeypatch):
    check_binding(lambda dist: None)
    with pytest.raises(NvmlUnavailable, match=r"unofficial PyPI package 'pynvml' 11\.5\.0") as exc:
        check_binding(lambda dist: "11.5.0" if dist == "pynvml" else None)
    assert "pip uninstall -y pynvml" in exc.value.hint
    monkeypatch.setattr(nvml, "_dist_version", lambda dist: "7.352.0" if dist == "nvidia-ml-py3" else None)
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py3"):
        NvmlBackend.open()


def test_real_nvmlinit_without_driver_raises_library_not_found():
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("an NVIDIA driver is present on this machine")
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        pynvml.nvmlInit()
    with pytest.raises(NvmlUnavailable, match="NVML Shared Library Not Found"):
        NvmlBackend.open()  # the real adapter, real pynvml, no driver


def test_nvml_errors_are_unhashable_so_policy_is_keyed_by_value():
    with pytest.raises(TypeError):
        {pynvml.NVMLError_NotSupported()}
    assert isinstance(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED), pynvml.NVMLError_NotSupported)
    names = {
        "NOT_SUPPORTED": 3, "NO_PERMISSION": 4, "GPU_IS_LOST": 15, "NOT_FOUND": 6, "FUNCTION_NOT_FOUND": 13,
        "UNKNOWN": 999, "INSUFFICIENT_SIZE": 7, "UNINITIALIZED": 1, "RESET_REQUIRED": 16, "TIMEOUT": 10,
        "GPU_NOT_FOUND": 28,
    }  # fmt: skip
    assert {getattr(pynvml, f"NVML_ERROR_{n}") for n in names} == set(nvml.POLICY)
    assert all(getattr(pynvml, f"NVML_ERROR_{n}") == v for n, v in names.items())


def test_close_frees_and_shuts_down_once(fake):
    b = open_backend(fake)
    tick = Ticker(b, fake)
    tick()
    b.close()
    b.close()
    assert fake.count("nvmlShutdown") == 1 and not fake.initialized and fake.live_bufs == {}


def test_fake_rejects_signature_drift(monkeypatch):
    class Drifted(FakeNvml):
        def nvmlDeviceGetClockInfo(self, handle, clock_type):  # real name is `type`
            return 0

    with pytest.raises(AssertionError, match="nvmlDeviceGetClockInfo"):
        install(monkeypatch, Drifted([h100(0)]))


def test_fake_fails_on_unimplemented_pynvml_call(fake):
    with pytest.raises(AssertionError, match="nvmlDeviceGetFanSpeed"):
        pynvml.nvmlDeviceGetFanSpeed(None)


# -- module boundary -----------------------------------------------------------------------------------


def test_only_the_nvml_module_imports_pynvml():
    root = Path(nvml.__file__).parents[1]
    pattern = re.compile(r"^\s*(import\s+pynvml|from\s+pynvml\s+import)", re.MULTILINE)
    hits = {p.relative_to(root).as_posix() for p in root.rglob("*.py") if pattern.search(p.read_text())}
    assert hits == {"sources/nvml.py"}


def test_importing_gpuaudit_does_not_load_pynvml():
    mods = "gpuaudit, gpuaudit.sources.nvml, gpuaudit.sources.simulated"
    code = f"import sys, {mods}; print('pynvml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
