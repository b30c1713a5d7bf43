"""serve-sim: OpenAI routes, SSE, vLLM 0.33 /metrics, disconnects, queue limits, /gpu-load coupling.

Every test talks to a real server on 127.0.0.1 (in a thread, or the CLI in a subprocess)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest

from gpuaudit.recommend.catalog import resolve_gpu, resolve_model
from gpuaudit.recommend.simulator import EngineConfig
from gpuaudit.replay.prompts import build_prompt
from gpuaudit.servesim.gpuload import LoadCoupledBackend, fetch_gpu_load
from gpuaudit.servesim.metrics import length_buckets
from gpuaudit.servesim.server import ServeSimConfig, ServeSimThread
from gpuaudit.sources.simulated import SimulatedBackend
from gpuaudit.sources.vllm import parse_metrics

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def engine(**kw) -> EngineConfig:
    return EngineConfig(model=resolve_model(MODEL)[0], gpu=resolve_gpu(kw.pop("gpu", "H100")), **kw)


def server(**kw) -> ServeSimThread:
    cfg = kw.pop("engine", None) or engine()
    return ServeSimThread(ServeSimConfig(engine=cfg, served_model_name=MODEL, **kw))


_SALT = iter(range(10**9))


def completion(url: str, input_len: int, output_len: int, **extra) -> dict:
    """A non-streaming request with a fresh prompt (distinct prompts share no prefix-cache blocks)."""
    prompt = build_prompt(input_len, salt=f"t{next(_SALT)}")
    body = {"model": MODEL, "prompt": prompt, "max_tokens": output_len, "ignore_eos": True}
    r = httpx.post(url + "/v1/completions", json=body | extra, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(url: str, body: dict, path: str = "/v1/completions") -> list[dict | str]:
    out: list[dict | str] = []
    with httpx.stream("POST", url + path, json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: ")
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def metrics_rows(url: str) -> dict:
    rows = parse_metrics(httpx.get(url + "/metrics").text, ts=NOW, endpoint=url)
    assert len(rows) == 1 and rows[0].model_name == MODEL and rows[0].engine == "0"
    return dict(rows[0].values)


def test_streaming_completion_usage_and_done():
    with server() as srv:
        body = {
            "model": MODEL,
            "prompt": build_prompt(300),
            "max_tokens": 12,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        ev = sse_events(srv.url, body)
    assert ev[-1] == "[DONE]"
    usage = ev[-2]
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 300
    assert usage["usage"]["completion_tokens"] == 12
    tokens = [e for e in ev[:-2] if isinstance(e, dict)]
    assert len(tokens) == 12 and all(e["object"] == "text_completion" for e in tokens)
    assert [e["choices"][0]["finish_reason"] for e in tokens] == [None] * 11 + ["length"]


def test_chat_stream_and_non_streaming_json():
    with server() as srv:
        msgs = [{"role": "user", "content": build_prompt(100)}]
        ev = sse_events(
            srv.url,
            {"model": MODEL, "messages": msgs, "max_tokens": 5, "ignore_eos": True, "stream": True},
            "/v1/chat/completions",
        )
        whole = completion(srv.url, 50, 7)
        natural = completion(srv.url, 50, 120, ignore_eos=False)
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert ev[-1] == "[DONE]" and "usage" not in ev[-2]  # no include_usage: no usage chunk
    assert sum(1 for e in ev[1:-1] if e["choices"][0]["delta"].get("content")) == 5
    assert whole["usage"] == {
        "prompt_tokens": 50,
        "completion_tokens": 7,
        "total_tokens": 57,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert len(whole["choices"][0]["text"].split()) == 7
    # without ignore_eos: a deterministic shorter length ("stop"), never above max_tokens
    n = natural["usage"]["completion_tokens"]
    assert 30 <= n <= 120 and natural["choices"][0]["finish_reason"] == ("length" if n == 120 else "stop")


def test_errors_use_vllm_shapes():
    with server(max_model_len=1000) as srv:
        u = srv.url
        assert httpx.get(u + "/health").status_code == 200
        head = httpx.head(u + "/v1/models")
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
        assert httpx.get(u + "/v1/models").json()["data"][0]["id"] == MODEL
        assert httpx.get(u + "/nope").status_code == 404
        assert httpx.get(u + "/v1/completions").status_code == 405
        bad = httpx.post(u + "/v1/completions", content=b"{not json")
        assert bad.status_code == 400 and "error" in bad.json()
        other = httpx.post(u + "/v1/completions", json={"model": "x", "prompt": "hi"})
        assert other.status_code == 404 and "does not exist" in other.json()["error"]["message"]
        long = httpx.post(
            u + "/v1/completions", json={"model": MODEL, "prompt": build_prompt(900), "max_tokens": 200}
        )
        assert long.status_code == 400 and "maximum context length is 1000" in long.json()["error"]["message"]


def test_keep_alive_serves_two_requests_on_one_connection():
    with server() as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            req = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
            s.sendall(req + req)  # pipelined on one connection
            data = b""
            while data.count(b"HTTP/1.1 200") < 2:
                chunk = s.recv(65536)
                assert chunk, "server closed the connection early"
                data += chunk
    assert data.count(b'"object": "list"') == 2


def _fixture_columns(data_dir) -> dict:
    text = (data_dir / "vllm" / "vllm-0.33-synthetic-t0.prom").read_text()
    return dict(parse_metrics(text, ts=NOW, endpoint="fixture")[0].values)


def test_metrics_parse_into_the_same_columns_as_real_vllm_033(data_dir):
    with server() as srv:
        completion(srv.url, 200, 10)
        completion(srv.url, 40, 3)
        got = metrics_rows(srv.url)
    want = _fixture_columns(data_dir)
    assert {k for k, v in got.items() if v is not None} == {k for k, v in want.items() if v is not None}
    # default buckets are vLLM's (the fixture's page is 0.33 with max_model_len 128k)
    for k, v in want.items():
        if k.endswith("_le"):
            assert got[k] == v, k
    cfg = json.loads(got["cache_config_json"])
    assert cfg["block_size"] == "16" and int(cfg["num_gpu_blocks"]) * 16 == int(cfg["kv_cache_size_tokens"])


def test_metrics_counts_and_vllm_invariants():
    with server() as srv:
        for inp, out in ((200, 10), (40, 3), (500, 1)):
            completion(srv.url, inp, out)
        m = metrics_rows(srv.url)
    assert m["request_success_length_total"] == 3
    assert m["prompt_tokens_total"] == 740 and m["generation_tokens_total"] == 14
    assert m["generation_tokens_total"] == m["ttft_seconds_count"] + m["itl_seconds_count"]  # VLLM_METRICS §5
    assert m["iteration_tokens_sum"] == m["prompt_tokens_local_compute_total"] + m["generation_tokens_total"]
    assert m["tpot_seconds_count"] == 2  # single-token requests have no TPOT
    assert m["num_requests_running"] == 0 and m["kv_cache_usage_frac"] == 0


def test_prefix_cache_hits_for_shared_hash_blocks():
    with server() as srv:
        for salt in range(2):
            body = {
                "model": MODEL,
                "prompt": build_prompt(100, hash_ids=[7, 8, 9], salt=salt),
                "max_tokens": 2,
            }
            r = httpx.post(srv.url + "/v1/completions", json=body | {"ignore_eos": True}).json()
        m = metrics_rows(srv.url)
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 48  # 3 shared 16-token blocks
    assert m["prefix_cache_hits_total"] == 48 and m["prefix_cache_queries_total"] == 200


def test_client_disconnect_mid_stream_frees_the_request():
    with server(engine=engine(gpu="L4")) as srv:  # ~60 ms steps: time to hang up mid-stream
        body = {
            "model": MODEL,
            "prompt": build_prompt(50),
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]  # 3 tokens (each line + a blank)
        assert sum(x.startswith("data: ") for x in got) == 3
        other = completion(srv.url, 50, 5)  # the server keeps serving others
        deadline = time.time() + 5
        while time.time() < deadline:
            m = metrics_rows(srv.url)
            if m["request_success_abort_total"] == 1 and m["num_requests_running"] == 0:
                break
            time.sleep(0.05)
    assert other["usage"]["completion_tokens"] == 5
    assert m["request_success_abort_total"] == 1 and m["num_requests_running"] == 0
    assert m["kv_cache_usage_frac"] == 0  # its KV blocks were freed
    assert m["generation_tokens_total"] < 200


def test_queue_limit_answers_503_and_counts_rejections():
    with server(engine=engine(max_num_seqs=1), max_num_queued_reqs=1) as srv:
        with httpx.Client(timeout=30) as c:
            body = {
                "model": MODEL,
                "prompt": build_prompt(50),
                "max_tokens": 30,
                "ignore_eos": True,
                "stream": True,
            }
            streams = [c.stream("POST", srv.url + "/v1/completions", json=body) for _ in range(4)]
            statuses = []
            for s in streams:
                statuses.append(s.__enter__().status_code)
            for s in streams:
                s.__exit__(None, None, None)
        text = httpx.get(srv.url + "/metrics").text
    assert statuses.count(503) >= 1 and statuses.count(200) >= 2
    line = next(
        x for x in text.splitlines() if 'admission_rejections_total{model_name="' in x and "reqs" in x
    )
    assert float(line.rsplit(" ", 1)[1]) == statuses.count(503)


def test_preemption_under_small_kv_still_completes_every_request():
    tiny = replace(engine(max_num_seqs=8), num_gpu_blocks_override=40)  # 640 tokens of KV
    with server(engine=tiny) as srv, httpx.Client(timeout=60) as c:
        import concurrent.futures as cf

        def one(i: int) -> dict:
            body = {"model": MODEL, "prompt": build_prompt(100, salt=i), "max_tokens": 60, "ignore_eos": True}
            return c.post(srv.url + "/v1/completions", json=body).json()

        with cf.ThreadPoolExecutor(8) as pool:
            res = list(pool.map(one, range(8)))
        m = metrics_rows(srv.url)
    assert all(r["usage"]["completion_tokens"] == 60 for r in res)
    assert m["num_preemptions_total"] >= 1 and m["generation_tokens_total"] == 480


def test_gpu_load_drives_a_simulated_backend():
    with server(engine=engine(gpu="L4"), gpu_index=1) as srv:
        idle = fetch_gpu_load(srv.url)
        backend = LoadCoupledBackend(SimulatedBackend(3, seed=1), [srv.url])
        body = {"model": MODEL, "prompt": build_prompt(50), "max_tokens": 40, "ignore_eos": True}
        with httpx.Client(timeout=30) as c:
            import threading

            t = threading.Thread(target=lambda: c.post(srv.url + "/v1/completions", json=body))
            t.start()
            time.sleep(1.2)
            rows = backend.sample(datetime.now(UTC))
            t.join()
    assert [g.index for g in idle] == [1] and idle[0].util_pct == 0
    gpu1 = next(r for r in rows if r.gpu_index == 1 and r.parent_uuid is None)
    assert gpu1.util_gpu_pct is not None and gpu1.util_gpu_pct > 80  # one long decode keeps it busy
    assert gpu1.mem_used_bytes == pytest.approx(0.92 * gpu1.mem_total_bytes, rel=0.01)
    # the server is gone: its GPU reports idle (memory still held) and an endpoint_down event
    later = backend.sample(datetime.now(UTC))
    gpu1 = next(r for r in later if r.gpu_index == 1 and r.parent_uuid is None)
    assert gpu1.util_gpu_pct == 0
    assert [e.kind for e in backend.drain_events() if e.kind.startswith("endpoint")] == ["endpoint_down"]


def test_length_buckets_match_vllm():
    assert length_buckets(131072)[-3:] == [20000, 50000, 100000] and length_buckets(4096)[-1] == 2000


def test_cli_serves_and_reports_its_port(cli):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuaudit", "serve-sim", "--model", MODEL, "--gpu", "H100", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serve-sim: listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert completion(url, 20, 2)["usage"]["completion_tokens"] == 2
    finally:
        proc.send_signal(2)
        assert proc.wait(10) == 0
    assert "SIMULATED" in proc.stderr.read()


def test_cli_bad_inputs(cli):
    r = cli("serve-sim", "--model", MODEL, "--gpu", "H100", "--time-scale", "0")
    assert r.returncode == 2 and r.stderr.startswith("error: --time-scale") and "Traceback" not in r.stderr
    r = cli("serve-sim", "--model", "meta-llama/Llama-3.1-405B", "--gpu", "L4")
    assert r.returncode == 3 and "does not fit" in r.stderr and "Traceback" not in r.stderr
