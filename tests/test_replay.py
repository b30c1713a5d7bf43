"""gpuaudit replay: end to end against serve-sim (a real server subprocess), agreement with the
simulator, streaming edge cases on a hand-written server, SIGINT, bad inputs."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.simulator import engine_config_from_flags, load_trace, simulate
from gpuaudit.replay.client import ReplayOptions, replay
from gpuaudit.replay.prompts import WORDS, build_prompt, estimate_tokens
from gpuaudit.replay.results import bench_result
from gpuaudit.replay.trace import load_requests, requests_from_trace
from gpuaudit.servesim.server import ServeSimConfig, ServeSimThread

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BENCH_KEYS = {
    "date",
    "endpoint_type",
    "backend",
    "label",
    "model_id",
    "tokenizer_id",
    "num_prompts",
    "request_rate",
    "burstiness",
    "max_concurrency",
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "input_lens",
    "output_lens",
    "ttfts",
    "itls",
    "start_times",
    "latencies",
    "errors",
    "generated_texts",
    *(f"{s}_{m}_ms" for s in ("mean", "median", "std", "p99") for m in ("ttft", "tpot", "itl", "e2el")),
}


def write_trace(
    path: Path, n: int, rate: float, *, inp=(100, 500), out=(20, 60), seed=1, hashes=False
) -> Path:
    """Poisson arrivals at ``rate``; timestamps in seconds (``load_trace`` reads short traces as seconds)."""
    rng = random.Random(seed)
    t, lines = 0.0, []
    for i in range(n):
        line = {
            "timestamp": round(t, 3),
            "input_length": rng.randint(*inp),
            "output_length": rng.randint(*out),
        }
        if hashes:
            line["hash_ids"] = [1, 2, 3] + [100 * (i + 1) + k for k in range(line["input_length"] // 16 - 3)]
        lines.append(line)
        t += rng.expovariate(rate)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@contextmanager
def serve_sim(*args: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuaudit", "serve-sim", "--model", MODEL, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


@contextmanager
def sim_thread(gpu: str, **kw) -> Iterator[ServeSimThread]:
    cfg, _ = engine_config_from_flags(model_id=MODEL, gpu_name=gpu)
    with ServeSimThread(ServeSimConfig(engine=cfg, served_model_name=MODEL, **kw)) as srv:
        yield srv


def finished(url: str) -> float:
    page = httpx.get(url + "/metrics").text
    return sum(
        float(x.rsplit(" ", 1)[1]) for x in page.splitlines() if x.startswith("vllm:request_success_total")
    )


def test_prompts_hit_the_requested_token_count(data_dir):
    verified = json.loads((data_dir / "replay" / "llama3_word_tokens.json").read_text())["ids"]
    assert set(WORDS) <= set(verified) and len(set(WORDS)) == 256  # each word: one Llama-3 token
    for n in (2, 17, 300, 4096):
        p = build_prompt(n, hash_ids=[5, 6], salt=n)
        assert estimate_tokens(p) + 1 == n  # + the BOS token the server adds
    a, b = build_prompt(100, hash_ids=[5, 6], salt=1), build_prompt(100, hash_ids=[5, 6], salt=2)
    assert a.split()[:32] == b.split()[:32] and a.split()[32:] != b.split()[32:]
    assert estimate_tokens("Hello, world! supercalifragilistic") == 4 + 4  # 20 letters: 4 tokens


def test_replay_cli_end_to_end_against_serve_sim(tmp_path, cli):
    trace = write_trace(tmp_path / "t.jsonl", 12, 12.0, out=(4, 12), hashes=True)
    out = tmp_path / "res.json"
    with serve_sim("--gpu", "H100") as url:
        r = cli(
            "replay",
            str(trace),
            "--endpoint",
            url,
            "--model",
            MODEL,
            "--out",
            str(out),
            "--save-detailed",
            "--metadata",
            "gpu=H100",
            "--goodput",
            "ttft:600000,e2el:600000",  # every request meets these
        )
    assert r.returncode == 0, r.stderr
    assert "Replay result" in r.stdout and "Successful requests:" in r.stdout and "goodput" in r.stdout
    res = json.loads(out.read_text())
    assert set(res) >= BENCH_KEYS
    want = [json.loads(x) for x in trace.read_text().splitlines()]
    assert res["completed"] == 12 and res["failed"] == 0 and res["partial"] is False
    assert res["input_lens"] == [w["input_length"] for w in want]  # the server counted exactly these
    assert res["output_lens"] == [w["output_length"] for w in want]
    assert [len(x) for x in res["itls"]] == [w["output_length"] - 1 for w in want]
    assert res["server"]["config"]["gpu"] == "H100-SXM" and res["gpu"] == "H100"
    assert res["cache_config"]["block_size"] == "16"
    assert res["total_output_tokens"] == sum(w["output_length"] for w in want)
    assert res["request_goodput"] == pytest.approx(res["request_throughput"])
    assert res["goodput_slo_ms"] == {"ttft": 600000, "e2el": 600000}


def test_replay_agrees_with_simulate_within_10_percent(tmp_path):
    """Throughput and TPOT measured by replay on serve-sim vs `simulate` on the same config and trace.
    Both the server and the trace run at time scale 0.5, so measured times are divided by 0.5.

    TTFT is checked on the server's side (its vLLM TTFT histogram), within 25 %: client-side TTFT adds
    loopback and scheduling latency of this shared 2-core machine, and a request landing just after a
    step boundary waits one more step (tens of ms on an L4)."""
    import httpx

    from gpuaudit.recommend.calibration import load_calibration

    trace = write_trace(tmp_path / "t.jsonl", 36, 6.0)
    with serve_sim("--gpu", "L4", "--time-scale", "0.5") as url:
        opts = ReplayOptions(url, MODEL, time_scale=0.5)
        res = bench_result(replay(requests_from_trace(trace), opts), opts)
        page = httpx.get(url + "/metrics").text
    cfg, _ = engine_config_from_flags(model_id=MODEL, gpu_name="L4")
    sim = simulate(cfg, load_trace(trace)).to_bench_dict()
    assert res["completed"] == sim["completed"] == 36
    measured = {
        "output_throughput": res["output_throughput"] * 0.5,
        "mean_tpot_ms": res["mean_tpot_ms"] / 0.5,
        "median_tpot_ms": res["median_tpot_ms"] / 0.5,
    }
    for key, value in measured.items():
        assert value == pytest.approx(sim[key], rel=0.10), (key, value, sim[key])
    ttft_sum = next(x for x in page.splitlines() if x.startswith("vllm:time_to_first_token_seconds_sum"))
    server_ttft_ms = (
        float(ttft_sum.rsplit(" ", 1)[1]) / 36 * 1000 / 0.5 + load_calibration().overhead_s(cfg.gpu) * 1000
    )
    # a request sent a few ms late may land one step (~45 ms) later: 25 % (issue 5's TTFT bar)
    assert server_ttft_ms == pytest.approx(sim["mean_ttft_ms"], rel=0.25)


class _EdgeHandler(BaseHTTPRequestHandler):
    """Every third request gets a 503; the others wait 0.4 s before the first byte, then stream 4
    tokens 50 ms apart, then usage and [DONE]."""

    protocol_version = "HTTP/1.0"
    count = 0
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).count += 1
            k = self.count
        if k % 3 == 0:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"error": "busy"}')
            return
        time.sleep(0.4)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(4):
            self.wfile.write(b'data: {"choices": [{"index": 0, "text": " w%d"}]}\n\n' % i)
            self.wfile.flush()
            time.sleep(0.05)
        self.wfile.write(b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}\n\n')
        self.wfile.write(b"data: [DONE]\n\n")


def test_slow_first_byte_and_503_are_measured_and_counted(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _EdgeHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        trace = write_trace(tmp_path / "t.jsonl", 6, 50.0)
        opts = ReplayOptions(url, "m")
        res = bench_result(replay(requests_from_trace(trace), opts), opts, detailed=True)
    finally:
        srv.shutdown()
    assert res["completed"] == 4 and res["failed"] == 2 and res["errors_by_status"] == {"503": 2}
    assert all(t >= 0.4 for t in res["ttfts"])  # TTFT includes the slow first byte ...
    # ... and ends at the first chunk: three 50 ms gaps follow it (bounds hold on a loaded machine)
    assert all(e - t >= 0.14 for t, e in zip(res["ttfts"], res["latencies"], strict=True))
    assert 45 <= res["median_itl_ms"] < 150 and 45 <= res["median_tpot_ms"] < 150
    assert res["output_lens"] == [4] * 4 and res["input_lens"] == [9] * 4  # from the usage chunk


def test_sigint_writes_a_partial_result(tmp_path):
    trace = write_trace(tmp_path / "t.jsonl", 60, 6.0, out=(10, 30))
    out = tmp_path / "partial.json"
    with sim_thread("L4") as srv:
        cmd = ["replay", str(trace), "--endpoint", srv.url, "--model", MODEL, "--out", str(out)]
        proc = subprocess.Popen([sys.executable, "-m", "gpuaudit", *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.time() + 20
        while time.time() < deadline and finished(srv.url) < 2:  # some done, more in flight
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    res = json.loads(out.read_text())
    assert res["partial"] is True and "(partial)" in stdout
    assert 2 <= res["completed"] < 60 and res["cancelled"] >= 1 and res["failed"] == 0


def test_dataset_source_replays_the_recorded_peak_hour(data_dir, tmp_path, cli):
    dataset = data_dir / "recommend" / "dataset"
    reqs = load_requests(dataset, hours=0.01)  # the first 36 s of the recorded peak hour
    assert len(reqs) > 100 and reqs[-1].send_s <= 36 and all(r.input_len >= 1 for r in reqs)
    assert any(r.hash_ids for r in reqs)  # the recording has prefix-cache counters
    out = tmp_path / "res.json"
    with sim_thread("H100", time_scale=0.2) as srv:
        args = ("--hours", "0.01", "--duration", "0.5", "--out", str(out), "--format", "json")
        r = cli("replay", str(dataset), "--endpoint", srv.url, "--model", MODEL, *args)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    due = [x for x in reqs if x.send_s < 0.5]
    assert res["completed"] == len(due) == json.loads(r.stdout)["completed"] and res["partial"] is False
    assert res["input_lens"] == [x.input_len for x in due]
    assert res["output_lens"] == [x.output_len for x in due]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_options_and_traces_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="--endpoint must be an http"):
        ReplayOptions("ftp://x", "m")
    with pytest.raises(ConfigError, match="--time-scale must be > 0"):
        ReplayOptions("http://127.0.0.1:1", "m", time_scale=0)
    (tmp_path / "bad.jsonl").write_text('{"timestamp": 0}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        requests_from_trace(tmp_path / "bad.jsonl")
    assert (
        ReplayOptions("http://h:8000/v1/completions", "m", api="chat").url
        == "http://h:8000/v1/chat/completions"
    )


def test_replay_cli_bad_inputs(tmp_path, cli):
    r = cli("replay", str(tmp_path / "missing.jsonl"), "--endpoint", "http://127.0.0.1:1", "--model", "m")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    trace = write_trace(tmp_path / "t.jsonl", 2, 10.0)
    r = cli("replay", str(trace), "--endpoint", "http://127.0.0.1:1", "--model", "m", "--goodput", "ttft")
    assert r.returncode == 2 and r.stderr.startswith("error: --goodput expects")
    assert "Traceback" not in r.stderr
    r = cli("replay", str(trace), "--endpoint", f"http://127.0.0.1:{_closed_port()}", "--model", "m")
    assert r.returncode == 3 and "no request succeeded" in r.stderr and "ConnectError" in r.stderr
