"""`gpuaudit sample` / `gpuaudit run` as real subprocesses: signals, crashes, full disk, bad flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpuaudit.store import parquet_files, read_table
from tests.conftest import REPO

FAST = ["--gpu-backend", "simulated", "--simulated-gpus", "3", "--interval", "0.1", "--flush-interval", "0.5"]


def start_sampler(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gpuaudit", "sample", "--out", str(out), *FAST, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def total_rows(out: Path) -> int:
    return sum(read_table(out, t).num_rows for t in ("gpu", "engine", "process", "event"))


def wait_for(pred, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_duration_ends_cleanly(tmp_path, cli):
    r = cli("sample", "--out", str(tmp_path), *FAST, "--duration", "2")
    assert r.returncode == 0, r.stderr
    gpu = read_table(tmp_path, "gpu")
    ticks = int(r.stderr.strip().splitlines()[-1].split("(")[1].split()[0])
    assert ticks >= 2 and gpu.num_rows == 3 * ticks  # busy, idle-held and idle-empty GPUs every tick
    assert set(gpu.column("source").to_pylist()) == {"simulated"}
    assert set(gpu.column("host").to_pylist()) == {"simulated-host"}


def test_sigterm_flushes_every_row(tmp_path):
    proc = start_sampler(tmp_path)
    wait_for(lambda: parquet_files(tmp_path, "gpu"))
    time.sleep(0.7)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # the sampler reports how many rows it wrote; every one of them is in the dataset
    reported = int(err.strip().splitlines()[-1].split()[1])
    assert reported == total_rows(tmp_path) > 0


def test_sigint_also_exits_zero(tmp_path):
    proc = start_sampler(tmp_path)
    wait_for(lambda: parquet_files(tmp_path, "gpu"))
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_sigkill_loses_at_most_one_flush_interval_and_restart_continues(tmp_path):
    proc = start_sampler(tmp_path)
    wait_for(lambda: parquet_files(tmp_path, "gpu"))
    time.sleep(2.0)
    flushed_before = read_table(tmp_path, "gpu").num_rows
    killed_at = datetime.now(UTC)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    after = read_table(tmp_path, "gpu")  # must read: no torn file is visible
    assert after.num_rows >= flushed_before > 0
    newest = max(after.column("ts").to_pylist())
    # at most one flush interval (0.5 s) is lost; 2 s of slack for a loaded CI machine
    assert (killed_at - newest).total_seconds() <= 0.5 + 2.0
    # a restarted sampler keeps what was flushed and carries on in the same dataset
    r = subprocess.run(
        [sys.executable, "-m", "gpuaudit", "sample", "--out", str(tmp_path), *FAST, "--duration", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    again = read_table(tmp_path, "gpu")
    assert again.num_rows > after.num_rows
    assert set(after.column("ts").to_pylist()) <= set(again.column("ts").to_pylist())


def test_bad_flags_exit_2(cli, tmp_path):
    r = cli("sample", "--out", str(tmp_path), "--interval", "0")
    assert r.returncode == 2 and "--interval must be > 0" in r.stderr and "Traceback" not in r.stderr
    r = cli("sample", "--out", str(tmp_path), "--gpu-backend", "cuda")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_unwritable_out_exit_2(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = cli("sample", "--out", str(blocker / "sub"), "--gpu-backend", "simulated", "--duration", "1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: cannot write to output directory") and str(blocker) in lines[0]
    assert lines[1].startswith("hint:") and "Traceback" not in r.stderr


def test_nvml_missing(cli, tmp_path):
    r = cli("sample", "--out", str(tmp_path), "--gpu-backend", "nvml", "--duration", "1")
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("error: ") and "hint: " in r.stderr and "Traceback" not in r.stderr
    # auto on a host without a driver: a warning, then engines only
    r = cli("sample", "--out", str(tmp_path / "auto"), "--duration", "1")
    assert r.returncode == 0, r.stderr
    assert "warning: NVML not available" in r.stderr


def _can_mount_tmpfs() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root to mount a tiny tmpfs for a real full disk")
def test_full_disk_clear_error_and_keeps_data(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount not permitted in this container")
    try:
        out = mnt / "ds"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpuaudit",
                "sample",
                "--out",
                str(out),
                "--gpu-backend",
                "simulated",
                "--simulated-gpus",
                "8",
                "--interval",
                "0.02",
                "--flush-interval",
                "0.2",
                "--duration",
                "60",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert r.returncode == 3, r.stderr
        assert (
            "error: cannot write" in r.stderr and "disk is full" in r.stderr and "Traceback" not in r.stderr
        )
        kept = read_table(out, "gpu")  # everything flushed before is still readable
        assert kept.num_rows > 0
    finally:
        subprocess.run(["umount", str(mnt)])


def test_sample_scrapes_vllm_endpoints_and_records_outages(tmp_path, cli):
    from tests.http_fixtures import MetricsServer, closed_port_url

    with MetricsServer() as srv:
        good = srv.fixture_url("vllm-0.33-synthetic-t0")
        base = good.removesuffix("/metrics")  # a base URL works as well as the /metrics URL
        r = cli(
            "sample",
            "--out",
            str(tmp_path),
            "--gpu-backend",
            "simulated",
            "--simulated-gpus",
            "2",
            "--interval",
            "0.2",
            "--engine-interval",
            "0.5",
            "--duration",
            "2",
            "--vllm",
            base,
            "--vllm",
            closed_port_url(),
        )
    assert r.returncode == 0, r.stderr
    engine = read_table(tmp_path, "engine").to_pylist()
    assert engine and {e["endpoint"] for e in engine} == {good}
    assert {e["model_name"] for e in engine} == {"meta-llama/Llama-3.1-8B-Instruct"}
    assert all(e["generation_tokens_total"] > 0 for e in engine)
    assert sum(e["cache_config_json"] is not None for e in engine) == 1  # stored when it changes
    events = read_table(tmp_path, "event").to_pylist()
    down = [e for e in events if e["kind"] == "endpoint_down"]
    assert len(down) == 1 and down[0]["subject"] != good  # one transition, not one per scrape
    assert read_table(tmp_path, "gpu").num_rows > 0  # the dead endpoint did not stop GPU sampling


def test_run_samples_while_command_runs_and_exits_with_its_code(tmp_path, cli):
    prog = "import sys, time; time.sleep(1.5); sys.exit(7)"
    r = cli(
        "run",
        "--out",
        str(tmp_path),
        "--gpu-backend",
        "simulated",
        "--simulated-gpus",
        "2",
        "--interval",
        "0.2",
        "--",
        sys.executable,
        "-c",
        prog,
    )
    assert r.returncode == 7, r.stderr
    assert "exited 7 after" in r.stderr and "util mean" in r.stderr
    assert read_table(tmp_path, "gpu").num_rows >= 2


def test_run_missing_command_is_a_usage_error(tmp_path, cli):
    r = cli("run", "--out", str(tmp_path), "--gpu-backend", "none", "--", "/nonexistent/prog")
    assert r.returncode == 2 and "cannot run '/nonexistent/prog'" in r.stderr and "Traceback" not in r.stderr


def test_sim_load_url_needs_the_simulated_backend(tmp_path, cli):
    r = cli("sample", "--out", str(tmp_path), "--gpu-backend", "none", "--sim-load-url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "--sim-load-url needs --gpu-backend simulated" in r.stderr
