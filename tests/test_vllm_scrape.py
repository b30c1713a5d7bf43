"""VllmScraper against a real HTTP server on 127.0.0.1: failures, backoff, recovery, limits."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from gpuaudit.errors import ConfigError
from gpuaudit.sources.vllm import BACKOFF_MAX_S, VllmScraper, parse_metrics
from tests.http_fixtures import FIXTURE_ROUTES, GARBAGE_LINE, T0_STEM, MetricsServer, closed_port_url

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OLD_STEM = "vllm-0.10-real-qwen2.5-0.5b"
TIMEOUT_S = 0.4
MAX_BYTES = 256 * 1024  # the t0 page is ~66 KB


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def srv() -> Iterator[MetricsServer]:
    with MetricsServer(slow_s=5.0, huge_bytes=4 * MAX_BYTES) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def scraper(urls: list[str], clock: FakeClock, **kw) -> VllmScraper:
    return VllmScraper(urls, timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES, clock=clock, **kw)


def by_kind(events) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for e in events:
        assert e.source == "vllm" and e.ts == NOW
        out.setdefault(e.kind, {})[e.subject] = e.detail
    return out


def test_good_endpoint_yields_rows_while_the_others_fail_each_on_its_own(srv, clock) -> None:
    good, old = srv.fixture_url(T0_STEM), srv.fixture_url(OLD_STEM)
    bad = {
        "refused": closed_port_url(),
        "slow": srv.url("/slow/metrics"),
        "garbage": srv.url("/garbage/metrics"),
        "huge": srv.url("/huge/metrics"),
        "declared": srv.url("/huge-declared/metrics"),
        "error": srv.url("/error/metrics"),
    }
    with scraper([good, *bad.values(), old], clock) as sc:
        start = time.perf_counter()
        result = sc.scrape(NOW)
        assert time.perf_counter() - start < 3 * TIMEOUT_S + 1  # endpoints are scraped concurrently
        assert sorted((s.endpoint, s.model_name) for s in result.samples) == sorted(
            [(good, "meta-llama/Llama-3.1-8B-Instruct"), (old, "/job/model/Qwen2.5-0.5B-Instruct")]
        )
        expected = parse_metrics(srv.pages[FIXTURE_ROUTES[T0_STEM]], ts=NOW, endpoint=good)
        assert [s for s in result.samples if s.endpoint == good] == expected
        events = by_kind(result.events)
        assert set(events) == {"endpoint_down"}
        down = events["endpoint_down"]
        assert down == {
            bad["refused"]: "connection refused",
            bad["slow"]: f"timeout after {TIMEOUT_S:g} s",
            bad["garbage"]: down[bad["garbage"]],
            bad["huge"]: f"body over {MAX_BYTES} bytes",
            bad["declared"]: down[bad["declared"]],
            bad["error"]: "HTTP 500",
        }
        assert down[bad["garbage"]].startswith(f"parse error at line {GARBAGE_LINE}: ")
        assert down[bad["declared"]].startswith(f"body over {MAX_BYTES} bytes (Content-Length ")

        # an immediate second scrape skips every failing endpoint: no request, no event
        hits = srv.hits.copy()
        again = sc.scrape(NOW)
        assert again.events == [] and {s.endpoint for s in again.samples} == {good, old}
        assert {p: srv.hits[p] - hits[p] for p in srv.hits if srv.hits[p] != hits[p]} == {
            "/vllm/vllm-0.33-synthetic-t0/metrics": 1,
            "/vllm/vllm-0.10-real-qwen2.5-0.5b/metrics": 1,
        }


def test_backoff_doubles_up_to_the_cap_and_records_one_down_event(srv, clock) -> None:
    path = "/vllm/backoff/metrics"
    srv.set_page(path, srv.pages["/vllm/vllm-0.33-synthetic-t0/metrics"])
    srv.set_down(path)
    with scraper([srv.url(path)], clock) as sc:
        attempts, events = [], []
        for _ in range(4000):  # 1 s ticks for a bit over an hour
            before = srv.hits[path]
            events += sc.scrape(NOW).events
            if srv.hits[path] != before:
                attempts.append(clock.t)
            clock.t += 1.0
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[:7] == [5, 10, 20, 40, 80, 160, 300]
        assert set(gaps[7:]) == {BACKOFF_MAX_S}
        assert [e.kind for e in events] == ["endpoint_down"]
        assert events[0].detail.startswith("RemoteProtocolError")

        srv.set_down(path, False)  # the server comes back: retried when due, then endpoint_up
        clock.t = attempts[-1] + BACKOFF_MAX_S
        result = sc.scrape(NOW)
        assert [(e.kind, e.subject) for e in result.events] == [("endpoint_up", srv.url(path))]
        assert f"after {len(attempts)} failed scrapes" in result.events[0].detail
        assert len(result.samples) == 1
        assert sc.scrape(NOW).events == []  # up stays up without new events


def test_a_flapping_endpoint_records_each_transition_once(srv, clock) -> None:
    path = "/vllm/flap/metrics"
    srv.set_page(path, srv.pages["/vllm/vllm-0.33-synthetic-t0/metrics"])
    with scraper([srv.url(path)], clock) as sc:
        kinds = []
        for down in (False, True, True, False, False, True, False):
            srv.set_down(path, down)
            clock.t += BACKOFF_MAX_S  # always due
            kinds += [e.kind for e in sc.scrape(NOW).events]
        assert kinds == ["endpoint_down", "endpoint_up", "endpoint_down", "endpoint_up"]


def test_cache_config_is_set_only_when_it_changes(srv, clock) -> None:
    path = "/vllm/config/metrics"
    page = srv.pages["/vllm/vllm-0.33-synthetic-t0/metrics"]
    srv.set_page(path, page)
    with scraper([srv.url(path)], clock) as sc:
        first, second = sc.scrape(NOW).samples[0], sc.scrape(NOW).samples[0]
        assert '"num_gpu_blocks": "26614"' in first.values["cache_config_json"]
        assert "cache_config_json" not in second.values
        assert {k: v for k, v in first.values.items() if k != "cache_config_json"} == dict(second.values)
        srv.set_page(path, page.replace('num_gpu_blocks="26614"', 'num_gpu_blocks="30000"'))
        third = sc.scrape(NOW).samples[0]
        assert '"num_gpu_blocks": "30000"' in third.values["cache_config_json"]


def test_base_url_redirect_and_openmetrics_content_type(srv, clock) -> None:
    om_page = 'vllm:num_requests_running{engine="0",model_name="om"} 3.0 1700000000.5\n# EOF\n'
    srv.set_page("/om/metrics", om_page, "application/openmetrics-text; version=1.0.0; charset=utf-8")
    srv.set_redirect("/moved/metrics", "/om/metrics")
    with scraper([srv.url("/om"), srv.url("/om/metrics/"), srv.url("/moved")], clock) as sc:
        assert sc.urls == [srv.url("/om/metrics"), srv.url("/moved/metrics")]  # normalized, de-duplicated
        result = sc.scrape(NOW)
        assert [(s.endpoint, s.values["num_requests_running"]) for s in result.samples] == [
            (srv.url("/om/metrics"), 3.0),
            (srv.url("/moved/metrics"), 3.0),  # the endpoint stays the configured URL
        ]
        assert result.events == []


def test_a_page_without_vllm_metrics_is_reported(srv, clock) -> None:
    srv.set_page("/notvllm/metrics", "process_open_fds 35.0\n")
    with scraper([srv.url("/notvllm/metrics")], clock) as sc:
        (event,) = sc.scrape(NOW).events
        assert event.kind == "endpoint_down" and "no vLLM engine metrics" in event.detail


def test_non_utf8_body_is_a_failure_not_a_crash(srv, clock) -> None:
    body = 'vllm:num_requests_running{model_name="caf\xe9"} 1\n'.encode("latin-1")
    srv.set_page("/latin1/metrics", body)
    with scraper([srv.url("/latin1/metrics")], clock) as sc:
        result = sc.scrape(NOW)
        assert result.samples == []
        expected = f"body is not UTF-8 (byte {body.index(0xE9)})"
        assert [(e.kind, e.detail) for e in result.events] == [("endpoint_down", expected)]


def test_an_injected_client_is_used_and_left_open(srv, clock) -> None:
    seen = []
    client = httpx.Client(event_hooks={"request": [seen.append]}, timeout=TIMEOUT_S)
    with scraper([srv.fixture_url(T0_STEM)], clock, client=client) as sc:
        assert len(sc.scrape(NOW).samples) == 1
    assert [str(r.url) for r in seen] == [srv.fixture_url(T0_STEM)]
    assert not client.is_closed
    client.close()


def test_no_endpoints_and_bad_options() -> None:
    with VllmScraper([]) as sc:
        assert sc.scrape(NOW).samples == [] and sc.scrape(NOW).events == []
    with pytest.raises(ConfigError):
        VllmScraper(["http://h"], timeout_s=0)
    with pytest.raises(ConfigError):
        VllmScraper(["ftp://h"])
