"""`--host-label`: the host of every imported row from one label (e.g. the Kubernetes node).

In a Kubernetes fleet, dcgm-exporter names its pod (or the node) in ``Hostname`` while vLLM's
``instance`` is a pod IP, so without the option the GPU rows and the engine rows of one node
land on different hosts and the report cannot give the engine its GPUs (no cost per token).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from gpuaudit.analyze.report import ReportOptions, build_report
from gpuaudit.errors import ConfigError
from gpuaudit.importers import import_files, import_prometheus, parse_file
from gpuaudit.importers.times import from_epoch_s
from gpuaudit.pricing import Pricing
from gpuaudit.store import parquet_files, read_table
from tests.prometheus_server import GPUS, HOSTNAME, INSTANCE, free_port, make_openmetrics
from tests.test_import_prom_json import query_range_doc

NODE = "gpu-node-1"
POD_IP = "10.0.0.7:8000"
DCGM_POD = "dcgm-exporter-abc"
STRAY_UUID = "GPU-33333333-aaaa-bbbb-cccc-222222222222"
STRAY_POD = "dcgm-exporter-xyz"
DCGM_FAMILIES = 6  # families per GPU in make_openmetrics
VLLM_SERIES = 11  # 4 plain, 2 request_success reasons, 3 ttft buckets + _count + _sum


def k8s_openmetrics(*, stray_gpu: bool = False) -> str:
    """make_openmetrics' data as a Kubernetes fleet exports it: dcgm-exporter's pod name in
    ``Hostname``, the pod IP in vLLM's ``instance``, and the node in a relabelled ``node`` label.

    ``stray_gpu`` adds a third GPU (a copy of GPU 0) whose series lack ``node``.
    """
    text = make_openmetrics().text
    text = text.replace(f'Hostname="{HOSTNAME}"', f'Hostname="{DCGM_POD}",node="{NODE}"')
    text = text.replace(f'instance="{INSTANCE}"', f'instance="{POD_IP}",node="{NODE}"')
    if not stray_gpu:
        return text
    out: list[str] = []
    pending: list[str] = []  # the stray GPU's lines, written after its family's block
    for line in text.splitlines():
        if not line.startswith("DCGM_"):
            out += pending
            pending = []
        out.append(line)
        if line.startswith("DCGM_") and f'UUID="{GPUS[0][1]}"' in line:
            stray = line.replace(f'gpu="0",UUID="{GPUS[0][1]}"', f'gpu="2",UUID="{STRAY_UUID}"')
            pending.append(stray.replace(f'Hostname="{DCGM_POD}",node="{NODE}"', f'Hostname="{STRAY_POD}"'))
    return "\n".join(out) + "\n"


def _write(tmp_path: Path, text: str, name: str = "fleet.om") -> Path:
    src = tmp_path / name
    src.write_text(text)
    return src


def _hosts(rows) -> set[str]:
    return set(rows.column("host").to_pylist())


def _engine(root: Path):
    report = build_report(root, ReportOptions(pricing=Pricing.flat(2.0)))
    (engine,) = report.engines
    return engine


def test_host_label_puts_gpus_and_engines_of_a_node_on_one_host(tmp_path):
    src = _write(tmp_path, k8s_openmetrics())
    parsed = parse_file(src, host=None, at=None, host_label="node")
    assert _hosts(parsed.gpu) == _hosts(parsed.engine) == {NODE}
    assert set(parsed.engine.column("endpoint").to_pylist()) == {POD_IP}  # the endpoint stays instance

    summary = import_files([src], tmp_path / "ds", host_label="node")
    assert (summary.host_label, summary.series_without_host_label, summary.warnings) == ("node", 0, ())
    assert summary.series == 2 * DCGM_FAMILIES + VLLM_SERIES
    assert {p.parent.name for p in summary.written} == {f"host={NODE}"}
    engine = _engine(tmp_path / "ds")
    assert engine.host == NODE and sorted(engine.gpu_uuids) == sorted(u for _, u in GPUS)
    assert engine.usd_per_1m_output_tokens is not None and engine.usd_per_1m_output_tokens > 0


def test_without_host_label_gpus_and_engines_of_a_node_get_different_hosts(tmp_path):
    """The problem --host-label solves: no attribution, so no cost per token."""
    src = _write(tmp_path, k8s_openmetrics())
    summary = import_files([src], tmp_path / "ds")
    assert (summary.host_label, summary.series, summary.warnings) == (None, 0, ())
    assert _hosts(read_table(tmp_path / "ds", "gpu")) == {DCGM_POD}
    assert _hosts(read_table(tmp_path / "ds", "engine")) == {POD_IP.split(":")[0]}
    engine = _engine(tmp_path / "ds")
    assert engine.gpu_uuids == () and engine.usd_per_1m_output_tokens is None


def test_series_without_the_label_fall_back_and_are_counted_once(tmp_path):
    t0, t1 = 1748959200.0, 1748959215.0
    node = f'node="{NODE}"'

    def page(t: float) -> str:
        return (
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
            f'DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-a",Hostname="{DCGM_POD}",{node}}} 50 {t}\n'
            f'DCGM_FI_DEV_GPU_UTIL{{gpu="1",UUID="GPU-b",Hostname="{STRAY_POD}"}} 60 {t}\n'
            f'DCGM_FI_DEV_GPU_UTIL{{gpu="2",UUID="GPU-c",node="",instance="10.0.0.8:9400"}} 70 {t}\n'
            "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n"
            f'DCGM_FI_DEV_POWER_USAGE{{gpu="1",UUID="GPU-b",Hostname="{STRAY_POD}"}} 100 {t}\n'
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{instance="{POD_IP}",model_name="m",{node}}} 1 {t}\n'
            f'vllm:num_requests_running{{instance="10.0.0.9:8000",model_name="m"}} 2 {t}\n'
            "# EOF\n"
        )

    files = [_write(tmp_path, page(t0), "t0.om"), _write(tmp_path, page(t1), "t1.om")]
    summary = import_files(files, tmp_path / "ds", host_label="node")
    # GPU-b's two families, GPU-c (an empty value is no value) and the second engine; the same
    # series in both files counts once
    assert (summary.series, summary.series_without_host_label) == (6, 4)
    assert summary.warnings == (
        "--host-label node: 4 of 6 series have no 'node' label; "
        "their rows' host falls back to Hostname/hostname, else the host part of instance",
    )
    gpu = {r["gpu_uuid"]: r["host"] for r in read_table(tmp_path / "ds", "gpu").to_pylist()}
    assert gpu == {"GPU-a": NODE, "GPU-b": STRAY_POD, "GPU-c": "10.0.0.8"}
    engine = {r["endpoint"]: r["host"] for r in read_table(tmp_path / "ds", "engine").to_pylist()}
    assert engine == {POD_IP: NODE, "10.0.0.9:8000": "10.0.0.9"}


def test_host_label_in_prometheus_api_json(tmp_path):
    doc = copy.deepcopy(query_range_doc())
    for series in doc["data"]["result"]:
        if series["metric"].get("le") != "0.5":  # one vLLM series lacks it
            series["metric"]["kubernetes_node"] = NODE
    src = _write(tmp_path, json.dumps(doc), "range.json")
    parsed = parse_file(src, host=None, at=None, host_label="kubernetes_node")
    assert _hosts(parsed.gpu) == _hosts(parsed.engine) == {NODE}  # the scrape's other series name it
    assert (len(parsed.host_label.seen), len(parsed.host_label.missing)) == (6, 1)  # `up` is not mapped


def test_host_label_does_not_apply_to_nvidia_smi(tmp_path, data_dir):
    smi = data_dir / "nvidia-smi" / "nvidia-smi-2xh100-synthetic.csv"
    summary = import_files([smi], tmp_path / "ds", host_label="node")
    assert (summary.series, summary.warnings) == (0, ())
    assert _hosts(read_table(tmp_path / "ds", "gpu")) == {smi.stem}


def test_host_and_host_label_together_is_a_usage_error(tmp_path):
    src = _write(tmp_path, k8s_openmetrics())
    with pytest.raises(ConfigError, match="--host and --host-label"):
        import_files([src], tmp_path / "ds", host="h", host_label="node")
    url = f"http://127.0.0.1:{free_port()}"  # checked before any request
    with pytest.raises(ConfigError, match="--host and --host-label"):
        import_prometheus(
            url, out=tmp_path / "ds", start=from_epoch_s(0), end=from_epoch_s(60), host="h", host_label="n"
        )
    with pytest.raises(ConfigError, match="not a label name"):
        import_files([src], tmp_path / "ds", host_label="no de")
    assert not (tmp_path / "ds").exists()


def _assert_one_line_error(r, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines
    assert len(lines) == 2 and lines[1].startswith("hint: ") and "Traceback" not in r.stderr


def test_subprocess_host_label_warning_and_usage_error(tmp_path, cli):
    src = _write(tmp_path, k8s_openmetrics(stray_gpu=True))
    out = tmp_path / "ds"
    r = cli("import", str(src), "--host-label", "node", "--out", str(out))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    total = 3 * DCGM_FAMILIES + VLLM_SERIES
    assert warnings == [
        f"warning: --host-label node: {DCGM_FAMILIES} of {total} series have no 'node' label; "
        "their rows' host falls back to Hostname/hostname, else the host part of instance"
    ]
    assert _hosts(read_table(out, "gpu")) == {NODE, STRAY_POD} and _hosts(read_table(out, "engine")) == {NODE}

    again = tmp_path / "ds2"
    r = cli("import", str(src), "--host", "h", "--host-label", "node", "--out", str(again))
    _assert_one_line_error(r, 2, "--host ", "--host-label")
    r = cli("import", "prometheus", "--url", f"http://127.0.0.1:{free_port()}", "--start", "now-1h",
            "--host", "h", "--host-label", "node", "--out", str(again))  # fmt: skip
    _assert_one_line_error(r, 2, "--host ", "--host-label")
    assert parquet_files(again, "gpu") == []
