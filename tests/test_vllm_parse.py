"""gpuaudit.sources.vllm mapping: fixture pages → engine rows, aliases, data parallel, errors."""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpuaudit.errors import ConfigError, ScrapeError
from gpuaudit.schema import ENGINE_COLUMNS, FINISHED_REASONS, HISTOGRAMS
from gpuaudit.sources.promtext import parse_exposition
from gpuaudit.sources.vllm import engine_samples, normalize_metrics_url, parse_metrics

DATA = Path(__file__).parent / "data" / "vllm"
PAGES = sorted(DATA.glob("*.prom"))
T0, T1, OLD = (
    DATA / f"{n}.prom"
    for n in ("vllm-0.33-synthetic-t0", "vllm-0.33-synthetic-t1", "vllm-0.10-real-qwen2.5-0.5b")
)
TS = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def one_row(text: str) -> dict:
    rows = parse_metrics(text, ts=TS, endpoint="http://h:8000/metrics")
    assert len(rows) == 1
    return dict(rows[0].values)


def raw(text: str, name: str, **labels: str) -> float:
    """The value of one sample, straight from the page (independent of the mapping)."""
    for s in parse_exposition(text).samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(name)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_fixture_maps_to_well_formed_rows(path: Path) -> None:
    text = path.read_text()
    rows = parse_metrics(text, ts=TS, endpoint="http://h:8000/metrics")
    assert [(r.engine, r.ts, r.endpoint) for r in rows] == [("0", TS, "http://h:8000/metrics")]
    values = rows[0].values
    assert set(values) <= set(ENGINE_COLUMNS)
    for h in HISTOGRAMS:
        if f"{h}_le" not in values:
            continue
        le, bucket = values[f"{h}_le"], values[f"{h}_bucket"]
        assert le == sorted(le) and le[-1] == math.inf and len(le) == len(bucket)
        assert all(a <= b for a, b in itertools.pairwise(bucket))  # cumulative
        assert bucket[-1] == values[f"{h}_count"]
    for col in (
        "num_requests_running",
        "generation_tokens_total",
        "prompt_tokens_total",
        "kv_cache_usage_frac",
    ):
        assert values[col] == pytest.approx(
            raw(text, {"kv_cache_usage_frac": "vllm:kv_cache_usage_perc"}.get(col, f"vllm:{col}"))
        )
    config = json.loads(values["cache_config_json"])
    assert "engine" not in config and list(config) == sorted(config)
    assert config["block_size"] == re.search(r'cache_config_info\{.*block_size="(\d+)"', text).group(1)


def test_t0_to_t1_matches_the_documented_expected_values() -> None:
    a, b = one_row(T0.read_text()), one_row(T1.read_text())

    def d(col: str) -> float:
        return b[col] - a[col]

    requests = sum(d(f"request_success_{r}_total") for r in FINISHED_REASONS)
    assert requests == 299
    assert d("prompt_tokens_total") == 72_346 and d("generation_tokens_total") == 55_503
    assert d("prefix_cache_hits_total") / d("prefix_cache_queries_total") == pytest.approx(0.278, abs=5e-4)
    assert d("prompt_len_tokens_sum") / d("prompt_len_tokens_count") == pytest.approx(239, abs=0.5)
    assert d("gen_len_tokens_sum") / d("gen_len_tokens_count") == pytest.approx(185, abs=0.5)
    assert d("ttft_seconds_sum") / d("ttft_seconds_count") == pytest.approx(0.0297, abs=5e-5)
    assert d("itl_seconds_sum") / d("itl_seconds_count") == pytest.approx(0.0150, abs=5e-5)
    assert d("e2e_seconds_sum") / d("e2e_seconds_count") == pytest.approx(2.79, abs=5e-3)
    assert d("iteration_tokens_count") == 1_056
    assert (a["num_requests_running"], b["num_requests_running"]) == (53, 54)
    assert a["num_requests_waiting"] == b["num_requests_waiting"] == 0
    assert a["kv_cache_usage_frac"] == pytest.approx(0.04, abs=0.005)
    assert d("num_preemptions_total") == 0
    # invariants (VLLM_METRICS.md §5)
    assert d("generation_tokens_total") == d("ttft_seconds_count") + d("itl_seconds_count") == 55_503
    assert (
        d("iteration_tokens_sum")
        == d("prompt_tokens_local_compute_total") + d("generation_tokens_total")
        == 107_737
    )
    assert (
        a["counters_created_s"]
        == b["counters_created_s"]
        == raw(T0.read_text(), "vllm:generation_tokens_created")
    )
    assert [b[f"{h}_bucket"][-1] - a[f"{h}_bucket"][-1] for h in ("ttft_seconds", "e2e_seconds")] == [
        299,
        299,
    ]


def test_old_names_on_the_real_0_10_page() -> None:
    text = OLD.read_text()
    v = one_row(text)
    assert v["kv_cache_usage_frac"] == raw(text, "vllm:kv_cache_usage_perc")
    assert v["prefix_cache_queries_total"] == raw(text, "vllm:prefix_cache_queries_total") == 39
    assert v["itl_seconds_count"] == raw(text, "vllm:time_per_output_token_seconds_count") == 23
    assert v["itl_seconds_le"][-1] == math.inf
    assert v["request_success_stop_total"] == 1 and v["request_success_length_total"] == 2
    # what 0.10 does not have stays absent: never 0
    for col in (
        "tpot_seconds_sum",
        "prompt_tokens_local_compute_total",
        "request_success_error_total",
        "request_success_other_total",
    ):
        assert col not in v
    assert v["counters_created_s"] == raw(text, "vllm:generation_tokens_created")


def _drop(text: str, *prefixes: str) -> str:
    return "\n".join(ln for ln in text.split("\n") if not ln.startswith(prefixes)) + "\n"


def test_old_names_alone_fill_the_same_columns() -> None:
    text = OLD.read_text()
    only_old = _drop(text, "vllm:kv_cache_usage_perc", "vllm:prefix_cache_")
    v = one_row(only_old)
    assert v["kv_cache_usage_frac"] == raw(text, "vllm:gpu_cache_usage_perc")
    assert v["prefix_cache_queries_total"] == raw(text, "vllm:gpu_prefix_cache_queries_total")
    assert v["prefix_cache_hits_total"] == raw(text, "vllm:gpu_prefix_cache_hits_total")


@pytest.mark.parametrize("old_first", [True, False])
def test_new_names_win_over_old_ones(old_first: bool) -> None:
    lines = [
        "# TYPE vllm:gpu_cache_usage_perc gauge",
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9',
        'vllm:time_per_output_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 50.0',
        'vllm:time_per_output_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 70.0',
        'vllm:time_per_output_token_seconds_count{engine="0",model_name="m"} 70.0',
    ]
    new = [
        "# TYPE vllm:kv_cache_usage_perc gauge",
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
        'vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 7.0',
        'vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 7.0',
    ]
    v = one_row("\n".join(lines + new if old_first else new + lines) + "\n")
    assert v["kv_cache_usage_frac"] == 0.25
    assert (v["itl_seconds_le"], v["itl_seconds_bucket"], v["itl_seconds_count"]) == ([math.inf], [7.0], 7.0)
    assert "itl_seconds_sum" not in v  # not mixed with the old family's parts


def test_unknown_finished_reasons_are_summed_into_other() -> None:
    page = "".join(
        f'vllm:request_success_total{{engine="0",finished_reason="{r}",model_name="m"}} {n}\n'
        for r, n in (("stop", 5), ("weird", 2), ("odd", 3), ("error", 1))
    )
    v = one_row(page)
    assert (v["request_success_stop_total"], v["request_success_error_total"]) == (5, 1)
    assert v["request_success_other_total"] == 5
    assert "request_success_length_total" not in v


def _relabel(text: str, engine: str) -> str:
    return text.replace('engine="0"', f'engine="{engine}"')


def test_data_parallel_engines_are_kept_apart() -> None:
    t0, t1 = T0.read_text(), T1.read_text()
    samples_1 = [ln for ln in _relabel(t1, "1").split("\n") if ln and not ln.startswith("#")]
    samples_1 = [ln.replace('num_gpu_blocks="26614"', 'num_gpu_blocks="9999"') for ln in samples_1]
    rows = parse_metrics(t0 + "\n".join(samples_1) + "\n", ts=TS, endpoint="e")
    by_engine = {r.engine: r.values for r in rows}
    assert sorted(by_engine) == ["0", "1"] and {r.model_name for r in rows} == {LLAMA}
    assert by_engine["0"] == one_row(t0)
    alone_1 = one_row(t1)
    assert {k: v for k, v in by_engine["1"].items() if k != "cache_config_json"} == {
        k: v for k, v in alone_1.items() if k != "cache_config_json"
    }
    assert json.loads(by_engine["1"]["cache_config_json"])["num_gpu_blocks"] == "9999"
    assert json.loads(by_engine["0"]["cache_config_json"])["num_gpu_blocks"] == "26614"


def test_missing_engine_label_means_engine_0_and_process_start_is_the_fallback_created() -> None:
    text = OLD.read_text().replace('engine="0",', "")
    no_created = _drop(text, *(ln.split("{")[0] for ln in text.split("\n") if "_created{" in ln))
    rows = parse_metrics(no_created, ts=TS, endpoint="e")
    assert [(r.model_name, r.engine) for r in rows] == [("/job/model/Qwen2.5-0.5B-Instruct", "0")]
    assert rows[0].values["counters_created_s"] == raw(text, "process_start_time_seconds")
    assert "cache_config_json" in rows[0].values  # an info gauge without engine applies to all
    assert "counters_created_s" not in one_row(_drop(no_created, "process_start_time_seconds"))


def test_a_bucket_with_a_bad_le_is_skipped_not_fatal() -> None:
    page = "".join(
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="{le}",model_name="m"}} {n}\n'
        for le, n in (("0.5", 1), ("oops", 2), ("+Inf", 3))
    )
    v = one_row(page)
    assert (v["ttft_seconds_le"], v["ttft_seconds_bucket"]) == ([0.5, math.inf], [1.0, 3.0])


def test_several_models_on_one_page() -> None:
    page = "".join(
        f'vllm:num_requests_running{{engine="0",model_name="{m}"}} {n}\n' for m, n in (("a", 1), ("b", 2))
    )
    rows = parse_metrics(page, ts=TS, endpoint="e")
    assert {(r.model_name, r.values["num_requests_running"]) for r in rows} == {("a", 1), ("b", 2)}


def test_pages_without_vllm_metrics_give_no_rows() -> None:
    dcgm = (DATA.parent / "dcgm" / "dcgm-exporter-8xh100-synthetic.prom").read_text()
    assert parse_metrics(dcgm, ts=TS, endpoint="e") == []
    # admission_rejections has model_name but maps to no column: it creates no row of its own
    assert (
        parse_metrics('vllm:admission_rejections_total{model_name="m",reason="x"} 3\n', ts=TS, endpoint="e")
        == []
    )


def test_counter_exposed_without_total_suffix_still_maps() -> None:
    page = '# TYPE vllm:generation_tokens counter\nvllm:generation_tokens{engine="0",model_name="m"} 12\n'
    assert one_row(page)["generation_tokens_total"] == 12


def test_engine_samples_accepts_an_exposition_built_elsewhere() -> None:
    expo = parse_exposition(T0.read_text())
    rows = engine_samples(expo, ts=TS, endpoint="x")
    assert rows[0].row(host="h", source="vllm")["generation_tokens_total"] == raw(
        T0.read_text(), "vllm:generation_tokens_total"
    )


def test_garbage_raises_a_scrape_error_naming_endpoint_and_line() -> None:
    text = T0.read_text().split("\n")
    text.insert(40, "oops {")
    with pytest.raises(ScrapeError) as info:
        parse_metrics("\n".join(text), ts=TS, endpoint="http://h:8000/metrics")
    assert "http://h:8000/metrics" in str(info.value) and "line 41" in str(info.value)
    assert info.value.exit_code == 3 and info.value.hint


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:8000", "http://h:8000/metrics"),
        ("http://h:8000/", "http://h:8000/metrics"),
        ("http://h:8000/metrics", "http://h:8000/metrics"),
        ("http://h:8000/metrics/", "http://h:8000/metrics"),
        ("h:8000", "http://h:8000/metrics"),
        ("  https://h/vllm  ", "https://h/vllm/metrics"),
        ("http://[::1]:8000", "http://[::1]:8000/metrics"),
        ("http://h:8000/metrics?x=1", "http://h:8000/metrics?x=1"),
    ],
)
def test_normalize_metrics_url(url: str, expected: str) -> None:
    assert normalize_metrics_url(url) == expected


@pytest.mark.parametrize("url", ["", "ftp://h/metrics", "http://h:notaport", "http://:8000"])
def test_normalize_metrics_url_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_metrics_url(url)
    assert repr(url) in str(info.value) and info.value.exit_code == 2
