"""Test helpers: an OpenMetrics backfill file with known raw samples, and a real Prometheus.

``make_openmetrics`` writes dcgm-exporter and vLLM series (one GPU with a 10-minute gap) and
returns the exact samples it wrote, so tests can compare what an import reads back.
``PrometheusServer`` backfills such a file with ``promtool tsdb create-blocks-from openmetrics``
and runs ``prometheus`` on 127.0.0.1 over it; ``stop()`` always terminates it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

START_S = 1748959200  # 2025-06-03T14:00:00Z
STEP_S = 15
POINTS = 90  # 22.5 minutes
GAP = range(20, 60)  # GPU 1 reports nothing for these points: 41 x 15 s between its samples
HOSTNAME = "node-1"
INSTANCE = "10.0.0.5:8000"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
GPUS = (("0", "GPU-11111111-aaaa-bbbb-cccc-000000000000"), ("1", "GPU-22222222-aaaa-bbbb-cccc-111111111111"))
MIB = 1024 * 1024
TTFT_LE = (0.1, 0.5, float("inf"))


def ts_of(k: int) -> float:
    """Sample times carry milliseconds, to check they survive."""
    return START_S + STEP_S * k + 0.125


@dataclass
class Backfill:
    text: str
    gpu: dict[tuple[str, int], dict[str, object]] = field(default_factory=dict)  # (uuid, ts_ms) -> columns
    engine: dict[int, dict[str, object]] = field(default_factory=dict)  # ts_ms -> columns


def _gpu_values(g: int, k: int) -> dict[str, float]:
    busy = g == 0 and k % 10 < 7
    return {
        "DCGM_FI_DEV_GPU_UTIL": 90 + k % 7 if busy else 0,
        "DCGM_FI_DEV_FB_USED": 70000 + g,
        "DCGM_FI_DEV_FB_FREE": 11559 - g,
        "DCGM_FI_DEV_POWER_USAGE": (400.5 if busy else 110.25) + k,
        "DCGM_FI_PROF_SM_ACTIVE": 0.25 if busy else 0.0,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 1_000_000 * (g + 1) + 6000 * k,
    }


def _gpu_columns(v: dict[str, float], g: int, uuid: str) -> dict[str, object]:
    return {
        "host": HOSTNAME,
        "gpu_uuid": uuid,
        "gpu_index": g,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "util_gpu_pct": float(v["DCGM_FI_DEV_GPU_UTIL"]),
        "mem_used_bytes": int(v["DCGM_FI_DEV_FB_USED"]) * MIB,
        "mem_total_bytes": int(v["DCGM_FI_DEV_FB_USED"] + v["DCGM_FI_DEV_FB_FREE"]) * MIB,
        "power_w": v["DCGM_FI_DEV_POWER_USAGE"],
        "sm_active_pct": v["DCGM_FI_PROF_SM_ACTIVE"] * 100,
        "energy_mj": int(v["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]),
    }


def _dcgm_lines(out: Backfill) -> list[str]:
    lines: list[str] = []
    families = list(_gpu_values(0, 0))
    for fam in families:
        counter = fam == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
        lines.append(f"# TYPE {fam} {'counter' if counter else 'gauge'}")
        for g, (index, uuid) in enumerate(GPUS):
            labels = f'gpu="{index}",UUID="{uuid}",modelName="NVIDIA H100 80GB HBM3",Hostname="{HOSTNAME}"'
            for k in range(POINTS):
                if g == 1 and k in GAP:
                    continue
                v = _gpu_values(g, k)
                lines.append(f"{fam}{'_total' if counter else ''}{{{labels}}} {v[fam]} {ts_of(k):.3f}")
                out.gpu[(uuid, round(ts_of(k) * 1000))] = _gpu_columns(v, g, uuid)
    return lines


def _engine_values(k: int) -> dict[str, object]:
    ttft = [2.0 * k, 3.0 * k, 3.0 * k]
    return {
        "num_requests_running": float(k % 5),
        "kv_cache_usage_frac": k / 100,
        "generation_tokens_total": 100.0 * k,
        "prompt_tokens_total": 300.0 * k,
        "request_success_stop_total": 2.0 * k,
        "request_success_length_total": float(k),
        "ttft_seconds_sum": 0.2 * k,
        "ttft_seconds_count": 3.0 * k,
        "ttft_seconds_le": list(TTFT_LE),
        "ttft_seconds_bucket": ttft,
    }


def _vllm_lines(out: Backfill) -> list[str]:
    base = f'engine="0",instance="{INSTANCE}",model_name="{MODEL}"'
    lines: list[str] = []
    series: list[tuple[str, str, str, str, str]] = [  # family, type, sample, extra labels, column
        ("vllm:num_requests_running", "gauge", "", "", "num_requests_running"),
        ("vllm:kv_cache_usage_perc", "gauge", "", "", "kv_cache_usage_frac"),
        ("vllm:generation_tokens", "counter", "_total", "", "generation_tokens_total"),
        ("vllm:prompt_tokens", "counter", "_total", "", "prompt_tokens_total"),
    ]
    for fam, typ, suffix, _, column in series:
        lines.append(f"# TYPE {fam} {typ}")
        lines += [
            f"{fam}{suffix}{{{base}}} {_engine_values(k)[column]} {ts_of(k):.3f}" for k in range(POINTS)
        ]
    lines.append("# TYPE vllm:request_success counter")
    for reason in ("length", "stop"):
        col = f"request_success_{reason}_total"
        labels = f'{base},finished_reason="{reason}"'
        lines += [
            f"vllm:request_success_total{{{labels}}} {_engine_values(k)[col]} {ts_of(k):.3f}"
            for k in range(POINTS)
        ]
    lines.append("# TYPE vllm:time_to_first_token_seconds histogram")
    for k in range(POINTS):
        v = _engine_values(k)
        for le, count in zip(TTFT_LE, v["ttft_seconds_bucket"], strict=True):  # type: ignore[call-overload]
            le_s = "+Inf" if le == float("inf") else str(le)
            lines.append(
                f'vllm:time_to_first_token_seconds_bucket{{{base},le="{le_s}"}} {count} {ts_of(k):.3f}'
            )
        lines.append(
            f"vllm:time_to_first_token_seconds_count{{{base}}} {v['ttft_seconds_count']} {ts_of(k):.3f}"
        )
        lines.append(f"vllm:time_to_first_token_seconds_sum{{{base}}} {v['ttft_seconds_sum']} {ts_of(k):.3f}")
    for k in range(POINTS):
        out.engine[round(ts_of(k) * 1000)] = {
            "host": INSTANCE.split(":")[0],
            "endpoint": INSTANCE,
            "model_name": MODEL,
            "engine": "0",
            **_engine_values(k),
        }
    return lines


def make_openmetrics() -> Backfill:
    """The OpenMetrics text (``# EOF``-terminated) and the rows an import must produce from it."""
    out = Backfill("")
    lines = _dcgm_lines(out) + _vllm_lines(out)
    out.text = "\n".join([*lines, "# EOF"]) + "\n"
    return out


def missing_binaries() -> str | None:
    missing = [b for b in ("prometheus", "promtool") if shutil.which(b) is None]
    return f"{' and '.join(missing)} not installed (apt-get install prometheus)" if missing else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """A real ``prometheus`` over backfilled data, on a free port of 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "tsdb"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def backfill(self, openmetrics_file: Path) -> None:
        subprocess.run(
            [
                "promtool",
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(openmetrics_file),
                str(self.data_dir),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self, timeout_s: float = 30.0) -> None:
        config = self.workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.data_dir}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=100y",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout_s} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
