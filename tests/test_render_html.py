"""The self-contained HTML report: pure rendering checks, then a real headless Chromium."""

from __future__ import annotations

import copy
import json
import math
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gpuaudit.render.html import render_html, sorted_findings
from gpuaudit.render.html_charts import state_fractions
from gpuaudit.render.html_events import MAX_EVENT_MARKERS, MAX_EVENT_ROWS
from gpuaudit.render.html_svg import MAX_POINTS_PER_SERIES, parse_times, segments

SAMPLE = Path(__file__).parent / "data" / "report_sample.json"
CHART_IDS = [
    "chart-util-timeseries",
    "chart-gpu-states",
    "chart-tokens-vs-util",
    "chart-cost-per-token",
    "chart-findings",
]
EVIL_MODEL = "<script>window.__pwned=1</script>"
EVIL_GPU = '"><img src=x onerror=window.__pwned=1>'


@pytest.fixture
def sample() -> dict:
    return json.loads(SAMPLE.read_text())


def hostile(report: dict) -> dict:
    """The sample with attacker-controlled strings in every kind of place that reaches the page."""
    r = copy.deepcopy(report)
    for e in r["engines"] + r["timeseries"]["engines"]:
        e["model"] = EVIL_MODEL
    for g in r["gpus"] + r["timeseries"]["gpus"]:
        g["name"] = EVIL_GPU
    r["gpus"][0]["uuid"] = r["timeseries"]["gpus"][0]["uuid"] = EVIL_GPU
    r["engines"][0]["gpu_uuids"] = [EVIL_GPU]
    r["engines"][0]["endpoint"] = "javascript:window.__pwned=1"
    f = r["findings"][0]
    f["title"], f["evidence"], f["code"], f["severity"] = EVIL_MODEL, EVIL_GPU, EVIL_MODEL, EVIL_GPU
    f["items"] = [EVIL_MODEL, EVIL_GPU]
    r["window"]["start"] = EVIL_MODEL
    r["pricing"]["source"] = "</style><script>window.__pwned=1</script>"
    r["gpuaudit_version"] = EVIL_GPU
    r["events"] = [
        {
            "ts": "2025-03-04T10:00:00Z",
            "host": EVIL_GPU,
            "source": EVIL_GPU,
            "kind": EVIL_MODEL,
            "subject": EVIL_MODEL,
            "detail": EVIL_GPU,
        }
    ]
    r["event_counts"] = {EVIL_MODEL: 1}
    return r


class Tags(HTMLParser):
    """Collects (tag, attrs) for every start tag, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def element(html: str, element_id: str) -> tuple[str, dict[str, str | None]]:
    found = [(t, a) for t, a in tags_of(html) if a.get("id") == element_id]
    assert len(found) == 1, f"expected one #{element_id}, found {len(found)}"
    return found[0]


# ---------------------------------------------------------------- pure rendering


def test_sample_has_every_section_chart_and_figure(sample):
    html = render_html(sample)
    assert html.startswith("<!DOCTYPE html>")
    for chart_id in CHART_IDS:
        tag, attrs = element(html, chart_id)
        assert (tag, attrs["class"]) == ("svg", "chart")
    t = sample["totals"]
    assert f"${t['cost_usd']:,.2f}" in html
    assert f"${t['idle_waste_usd']:,.2f}" in html
    assert f"{t['util_mean_pct']:.1f}%" in html
    assert f"${t['usd_per_1m_output_tokens']:.3f}" in html
    for g in sample["gpus"]:
        assert g["name"] in html and f"{g['util_mean_pct']:.1f}%" in html
    for e in sample["engines"]:
        assert e["model"] in html and e["endpoint"] in html
    assert "at least one kernel was running" in html  # the utilization.gpu caveat next to SM activity
    assert "SIMULATED DATA" not in html


def test_util_chart_draws_one_line_per_gpu_and_dashed_sm_where_present(sample):
    html = render_html(sample)
    paths = [a for t, a in tags_of(html) if t == "path" and "series" in (a.get("class") or "")]
    with_util = [g for g in sample["timeseries"]["gpus"] if any(v is not None for v in g["util_pct"])]
    with_sm = [
        g for g in sample["timeseries"]["gpus"] if any(v is not None for v in g.get("sm_active_pct") or [])
    ]
    assert len([p for p in paths if p["class"] == "series util"]) == len(with_util)
    dashed = [p for p in paths if p["class"] == "series sm"]
    assert len(dashed) == len(with_sm) > 0
    assert all(p.get("stroke-dasharray") for p in dashed)
    # the GPU with a 25-minute telemetry gap is drawn as two runs, not bridged across the gap
    gapped = sample["timeseries"]["gpus"][3]
    assert len(segments(parse_times(gapped["t"]), gapped["util_pct"])) == 2


def test_findings_table_sorted_by_savings_unknown_last(sample):
    html = render_html(sample)
    table = html[html.index('id="findings-table"') :]
    order = re.findall(r"<code>([^<]+)</code>", table)
    savings = [f["est_savings_usd_per_month"] for f in sample["findings"]]
    known = sorted((v, f["code"]) for v, f in zip(savings, sample["findings"], strict=True) if v is not None)
    assert order[: len(known)] == [code for _, code in reversed(known)]
    assert set(order[len(known) :]) == {
        f["code"] for f in sample["findings"] if f["est_savings_usd_per_month"] is None
    }
    badges = re.findall(r'<span class="badge sev-(\w+)">', table)
    assert badges == [sorted_findings(sample["findings"])[i]["severity"] for i in range(len(order))]


def test_simulated_banner_only_when_simulated_is_true(sample):
    assert 'id="simulated-banner"' not in render_html(sample)
    sample["simulated"] = True
    html = render_html(sample)
    assert 'id="simulated-banner"' in html and "SIMULATED DATA" in html
    sample["simulated"] = "false"  # not a bool: not simulated
    assert "SIMULATED DATA" not in render_html(sample)


def test_every_data_string_is_escaped(sample):
    html = render_html(hostile(sample))
    assert EVIL_MODEL not in html and EVIL_GPU not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=window.__pwned=1&gt;" in html
    tags = tags_of(html)
    assert [t for t, _ in tags if t in ("script", "img", "iframe", "object", "embed", "base", "link")] == []
    assert not any(k.startswith("on") for _, attrs in tags for k in attrs)
    assert html.count("<style>") == 1 and html.count("</style>") == 1
    assert "javascript:" not in [a.get("href", "") for _, a in tags]


def test_no_external_urls_anywhere(sample):
    html = render_html(sample)
    for _, attrs in tags_of(html):
        for name in ("src", "href", "action", "data", "poster", "srcset"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (name, value)
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", html, re.I)
    assert "@import" not in html and "<link" not in html and "<script" not in html
    csp = [
        a["content"]
        for t, a in tags_of(html)
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp and "default-src 'none'" in csp[0]  # nothing may be fetched even if markup slipped through


def test_empty_report_renders_no_data_notes():
    html = render_html({})
    for chart_id in CHART_IDS:
        tag, attrs = element(html, chart_id)
        assert (tag, attrs["class"]) == ("div", "nodata")
    assert "No GPUs in this report." in html and "No inference engines in this report." in html
    assert "No findings" in html
    assert "—" in html  # headline values are shown as unknown, not 0


@pytest.mark.parametrize(
    "key", ["window", "pricing", "totals", "gpus", "engines", "findings", "timeseries", "generated_at"]
)
def test_each_top_level_key_may_be_missing_or_null(sample, key):
    without = {k: v for k, v in sample.items() if k != key}
    assert "<h1" in render_html(without)
    assert "<h1" in render_html({**sample, key: None})


def test_null_values_everywhere_render_as_dashes(sample):
    r = copy.deepcopy(sample)
    for row in [r["totals"], *r["gpus"], *r["engines"], *r["findings"]]:
        for k in row:
            row[k] = None
    for series in r["timeseries"]["gpus"] + r["timeseries"]["engines"]:
        for k in ("util_pct", "sm_active_pct", "output_tok_s"):
            if k in series:
                series[k] = [None] * len(series["t"])
    html = render_html(r)
    assert html.count("—") > 50
    for chart_id in (
        "chart-util-timeseries",
        "chart-gpu-states",
        "chart-tokens-vs-util",
        "chart-cost-per-token",
    ):
        assert element(html, chart_id)[0] == "div"


def test_wrong_types_and_non_finite_numbers_do_not_crash(sample):
    r = copy.deepcopy(sample)
    r["totals"] = ["not", "a", "mapping"]
    r["gpus"] = [*r["gpus"], "junk", 7, {"gpu_hours": math.nan, "idle_frac": math.inf, "name": 5}]
    r["gpus"][0]["util_mean_pct"] = "78"  # a string is not a number
    r["gpus"][1]["cost_usd"] = 10**400  # beyond float range
    r["engines"][0]["gpu_uuids"] = "GPU-x"
    r["findings"] = [*r["findings"], None, {"items": "x", "est_savings_usd_per_month": "9"}]
    r["timeseries"]["gpus"][0]["t"] = ["not a time", *r["timeseries"]["gpus"][0]["t"][1:]]
    html = render_html(r)
    assert "nan" not in html.lower().replace("nano", "") and "inf%" not in html
    assert element(html, "chart-util-timeseries")[0] == "svg"


def test_state_fractions_split_window_into_states():
    fr = state_fractions(
        {
            "gpu_hours": 3.0,
            "unobserved_hours": 1.0,
            "idle_frac": 0.5,
            "idle_held_frac": 0.3,
            "idle_empty_frac": 0.2,
        }
    )
    assert fr == pytest.approx(
        {"busy": 0.375, "idle_held": 0.225, "idle_empty": 0.15, "idle_unknown": 0.0, "unobserved": 0.25}
    )
    assert sum(fr.values()) == pytest.approx(1.0)
    assert state_fractions({"gpu_hours": 2.0, "idle_frac": None}) == {"no_util": 1.0, "unobserved": 0.0}
    assert state_fractions({"gpu_hours": 0, "unobserved_hours": None}) is None


def test_segments_break_at_nulls_and_gaps_only():
    t = [f"2025-01-01T00:00:{s:02d}Z" for s in (0, 10, 20, 30, 40)] + ["2025-01-01T00:05:00Z"]
    runs = segments(parse_times(t), [1, 2, None, 4, 5, 6])
    assert [[v for _, v in run] for run in runs] == [[1, 2], [4, 5], [6]]
    assert [[v for _, v in r] for r in segments(parse_times(t[:2]), [1, 2])] == [[1, 2]]


def test_long_series_are_downsampled(sample):
    n = 200_000
    r = copy.deepcopy(sample)
    r["timeseries"]["gpus"] = [
        {"uuid": "u", "t": [i for i in range(n)], "util_pct": [(i % 100) * 1.0 for i in range(n)]}
    ]
    html = render_html(r)
    d = next(a["d"] for t, a in tags_of(html) if t == "path" and a.get("class") == "series util")
    assert 2 <= d.count(",") <= MAX_POINTS_PER_SERIES + 1
    assert len(html) < 400_000


# ---------------------------------------------------------------- events


def event(ts: str, kind: str, subject: str = "", detail: str = "", host: str = "gpu-node-b") -> dict:
    return {"ts": ts, "host": host, "source": "test", "kind": kind, "subject": subject, "detail": detail}


SAMPLE_EVENTS = [
    event("2025-03-04T09:00:00Z", "sampler_start", "gpu-node-b", "nvml"),
    event("2025-03-04T10:00:00Z", "gpu_lost", "GPU-d24b6f80", "fell off the bus"),
    event("2025-03-04T10:30:00Z", "endpoint_down", EVIL_MODEL, EVIL_GPU),
    event("2025-03-04T10:31:00Z", "endpoint_up", "http://gpu-node-b:8000/metrics"),
]


def with_events(report: dict, events: list[dict], counts: dict | None = None) -> dict:
    r = copy.deepcopy(report)
    r["events"] = events
    if counts is None:
        counts = {}
        for e in events:
            counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    r["event_counts"] = counts
    return r


def util_chart(html: str) -> str:
    start = html.index('<svg class="chart" id="chart-util-timeseries"')
    return html[start : html.index("</svg>", start)]


def markers(html: str) -> list[dict[str, str | None]]:
    return [a for t, a in tags_of(util_chart(html)) if t == "g" and "event-marker" in (a.get("class") or "")]


def event_rows(html: str) -> list[list[str]]:
    """The events table's rows as lists of cell texts (tags stripped, entities kept)."""
    table = html[
        html.index('<table id="events-table"') : html.index("</table>", html.index('id="events-table"'))
    ]
    rows = re.findall(r'<tr class="event ev-[\w]+">(.*?)</tr>', table)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows]


EVENT_KINDS = ["sampler_start", "gpu_lost", "endpoint_down", "endpoint_up", "sampler_start"]
EVENT_SOURCES = ["sampler", "nvml", "vllm", "vllm", "sampler"]


@pytest.fixture(scope="module")
def event_report(tmp_path_factory) -> dict:
    """A real 3-minute dataset: GPU 1 is lost at 60 s and back after the sampler restarts at 120 s,
    the endpoint goes down (with a hostile subject and detail) at 90 s and up at 110 s."""
    from tests.analyze_data import at, engine, gpu, report, write

    root = tmp_path_factory.mktemp("events") / "ds"
    rows = [
        gpu(t, uuid=u, index=i, util=x)
        for t in range(181)
        for i, (u, x) in enumerate((("GPU-a", 80.0), ("GPU-b", 30.0)))
        if not (u == "GPU-b" and 60 < t < 120)
    ]
    write(root, "gpu", rows)
    write(root, "engine", [engine(t * 5, gen=1000.0 * t, prompt=100.0 * t) for t in range(37)])
    spec = [
        (0, "h1", "nvml"),
        (60, "GPU-b", "fell off the bus"),
        (90, EVIL_MODEL, EVIL_GPU),
        (110, "http://h1:8000/metrics", ""),
        (120, "h1", "nvml"),
    ]
    events = [
        {"ts": at(t), "host": "h1", "source": src, "kind": kind, "subject": subject, "detail": detail}
        for (t, subject, detail), kind, src in zip(spec, EVENT_KINDS, EVENT_SOURCES, strict=True)
    ]
    write(root, "event", events)
    doc = report(root, include_timeseries=True)
    assert [e["kind"] for e in doc["events"]] == EVENT_KINDS
    return doc


def test_events_are_marked_on_the_util_chart(sample):
    html = render_html(with_events(sample, SAMPLE_EVENTS))
    found = markers(html)
    assert [m["class"] for m in found] == [
        "event-marker ev-sampler_start",
        "event-marker ev-gpu_lost",
        "event-marker ev-endpoint_down",
        "event-marker ev-endpoint_up",
    ]
    assert [m["data-count"] for m in found] == ["1"] * 4
    lines = [a for t, a in tags_of(util_chart(html)) if t == "line" and a.get("class") == "event-line"]
    xs = [float(a["x1"] or "nan") for a in lines]
    assert xs == sorted(xs) and len(set(xs)) == 4
    assert all(a["x1"] == a["x2"] and a["stroke"] for a in lines)  # vertical, coloured by kind
    titles = re.findall(r"<title>([^<]*)</title>", util_chart(html))
    tip = "2025-03-04 10:00:00 UTC · gpu_lost\nsubject: GPU-d24b6f80\ndetail: fell off the bus\nhost: "
    assert tip + "gpu-node-b" in titles
    for label in ("event: sampler started", "event: GPU lost", "event: endpoint down", "event: endpoint up"):
        assert label in html
    assert 'id="event-markers-note"' not in html  # every listed event has its marker
    assert "Thin vertical marks with a flag on top are events" in html


def test_events_table_lists_rows_and_counts_per_kind(sample):
    counts = {"sampler_start": 1, "gpu_lost": 1, "endpoint_down": 1, "endpoint_up": 1}
    html = render_html(with_events(sample, list(reversed(SAMPLE_EVENTS)), counts))
    rows = event_rows(html)
    assert [r[0] for r in rows] == [
        "2025-03-04 09:00:00 UTC",
        "2025-03-04 10:00:00 UTC",
        "2025-03-04 10:30:00 UTC",
        "2025-03-04 10:31:00 UTC",
    ]  # by time, whatever the list order
    assert rows[1] == [
        "2025-03-04 10:00:00 UTC",
        "gpu-node-b",
        "gpu_losttest",
        "GPU-d24b6f80",
        "fell off the bus",
    ]
    assert rows[3][4] == "—"  # an empty detail shows as unknown
    count_table = html[
        html.index('id="event-counts"') : html.index("</table>", html.index('id="event-counts"'))
    ]
    assert re.findall(r"</i>([\w]+)</td><td class=\"num\">(\d+)</td>", count_table) == sorted(
        (k, str(v)) for k, v in counts.items()
    )
    assert "were left out" not in html


def test_event_strings_are_escaped_in_markers_and_table(sample):
    evil = event("2025-03-04T10:00:00Z", EVIL_MODEL, EVIL_MODEL, EVIL_GPU, host=EVIL_GPU)
    html = render_html(with_events(sample, [*SAMPLE_EVENTS, evil]))
    assert EVIL_MODEL not in html and EVIL_GPU not in html
    assert "subject: &lt;script&gt;window.__pwned=1&lt;/script&gt;" in util_chart(html)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html[html.index('id="events-table"') :]
    tags = tags_of(html)
    assert [t for t, _ in tags if t in ("script", "img", "iframe", "object", "embed")] == []
    assert not any(k.startswith("on") for _, attrs in tags for k in attrs)
    # a kind we do not know is drawn as "other": classes and colours never come from the data
    assert "event-marker ev-other" in [m["class"] for m in markers(html)]
    assert '<tr class="event ev-other">' in html


def test_events_left_out_of_the_report_are_counted(sample):
    counts = {"gpu_lost": 300, "endpoint_down": 200, "sampler_start": 1, "endpoint_up": 1}
    html = render_html(with_events(sample, SAMPLE_EVENTS, counts))
    assert "The report lists the first 4 of 502 events by time; 498 were left out." in html
    assert len(event_rows(html)) == 4 and len(markers(html)) == 4
    order = re.findall(r'</i>(\w+)</td><td class="num">([\d,]+)</td>', html)
    assert order == [
        ("gpu_lost", "300"),
        ("endpoint_down", "200"),
        ("endpoint_up", "1"),
        ("sampler_start", "1"),
    ]


def test_many_events_share_markers_and_are_capped(sample):
    n = MAX_EVENT_MARKERS + 100
    burst = [event(f"2025-03-04T10:{i // 60:02d}:{i % 60:02d}Z", "gpu_lost", f"GPU-{i}") for i in range(n)]
    html = render_html(with_events(sample, burst))
    found = markers(html)
    assert 1 <= len(found) < 30  # 5 minutes of a 3-hour chart: a few pixel columns, not 300 lines
    assert sum(int(m["data-count"] or 0) for m in found) == MAX_EVENT_MARKERS
    assert f"{MAX_EVENT_MARKERS} of {n} listed events are marked" in html
    assert "… and" in util_chart(html)  # a shared marker's tooltip lists a few, then says how many more
    assert len(event_rows(html)) == MAX_EVENT_ROWS
    assert f"This table shows the first {MAX_EVENT_ROWS} of the {n} listed." in html


def test_events_outside_the_chart_are_listed_not_marked(sample):
    late = [*SAMPLE_EVENTS[:1], event("2025-03-09T00:00:00Z", "gpu_lost", "GPU-x"), event("not a time", "x")]
    html = render_html(with_events(sample, late))
    assert len(markers(html)) == 1
    assert "1 of 3 listed events are marked (2 have no time inside the chart's range)" in unescape(html)
    rows = event_rows(html)
    assert [r[0] for r in rows] == ["2025-03-04 09:00:00 UTC", "2025-03-09 00:00:00 UTC", "not a time"]


def test_no_events_says_so(sample):
    for report in ({**sample, "events": [], "event_counts": {}}, {}, {"events": "junk", "event_counts": [1]}):
        html = render_html(report)
        assert element(html, "events-table") == ("p", {"class": "nodata", "id": "events-table"})
        assert "No events in this window." in html and 'class="event-marker' not in html


def test_events_from_a_real_dataset_mark_where_lines_stop(event_report):
    html = render_html(event_report)
    found = markers(html)
    assert [m["class"] for m in found] == [f"event-marker ev-{k}" for k in EVENT_KINDS]
    assert [r[2] for r in event_rows(html)] == [
        f"{k}{s}" for k, s in zip(EVENT_KINDS, EVENT_SOURCES, strict=True)
    ]
    # GPU 1's first run of its utilization line ends at the GPU-lost marker
    chart = util_chart(html)
    paths = [a["d"] or "" for t, a in tags_of(chart) if t == "path" and a.get("class") == "series util"]
    gpu_b = paths[1].split(" M")[0]
    end_x = float(gpu_b.rsplit(" L", 1)[-1].split(",")[0])
    lines = [a for t, a in tags_of(chart) if t == "line" and a.get("class") == "event-line"]
    lost_x = float(lines[EVENT_KINDS.index("gpu_lost")]["x1"] or "nan")
    assert abs(end_x - lost_x) < 2


# ---------------------------------------------------------------- headless Chromium


@pytest.fixture(scope="module")
def browser():
    from tests.browser import HeadlessChromium, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium not installed (apt-get install chromium, or set $CHROMIUM)")
    with HeadlessChromium(timeout_s=20) as b:
        yield b


def load(browser, tmp_path: Path, html: str, name: str = "report.html"):
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return browser.load(path)


DRAWN = """Object.fromEntries(%s.map(id => {
  const el = document.getElementById(id);
  if (!el) return [id, null];
  const box = el.getBoundingClientRect();
  return [id, {tag: el.tagName.toLowerCase(), marks: el.querySelectorAll('path, rect, circle, line').length,
               w: box.width, h: box.height}];
}))"""


def test_browser_renders_sample_with_all_charts_and_no_errors(browser, tmp_path, sample):
    page = load(browser, tmp_path, render_html(sample))
    assert page.errors == []
    assert page.requests == [page.url]  # nothing fetched besides the file itself
    assert browser.evaluate("document.title").startswith("gpuaudit report")
    assert browser.evaluate("document.getElementById('report-title').textContent") == "GPU fleet audit"
    cost = browser.evaluate("document.querySelector('#headline-cost .value').textContent")
    assert cost == f"${sample['totals']['cost_usd']:,.2f}"
    drawn = browser.evaluate(DRAWN % json.dumps(CHART_IDS))
    for chart_id in CHART_IDS:
        info = drawn[chart_id]
        assert info is not None and info["tag"] == "svg", chart_id
        assert info["marks"] >= 1 and info["w"] > 300 and info["h"] > 50, (chart_id, info)
    rows = browser.evaluate("document.querySelectorAll('#gpu-table tbody tr').length")
    assert rows == len(sample["gpus"])


def test_browser_hostile_strings_stay_text(browser, tmp_path, sample):
    html = render_html(hostile(sample))
    # check the escaping itself, without the CSP safety net, and then the page as shipped
    no_csp = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    assert no_csp != html
    for name, doc in [("no-csp.html", no_csp), ("report.html", html)]:
        page = load(browser, tmp_path, doc, name)
        assert page.errors == [], name
        state = browser.evaluate(
            "({pwned: typeof window.__pwned, scripts: document.scripts.length,"
            " imgs: document.images.length, text: document.body.textContent})"
        )
        assert state["pwned"] == "undefined" and state["scripts"] == 0 and state["imgs"] == 0, name
        assert EVIL_MODEL in state["text"] and EVIL_GPU in state["text"], name


def test_browser_csp_blocks_injected_inline_script(browser, tmp_path, sample):
    html = render_html(sample).replace("<main>", "<main><script>window.__pwned=1</script>", 1)
    page = load(browser, tmp_path, html)
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert any("Content Security Policy" in e for e in page.errors), page.errors


def test_browser_empty_report_shows_no_data_notes(browser, tmp_path):
    page = load(browser, tmp_path, render_html({"simulated": True}))
    assert page.errors == []
    notes = browser.evaluate(f"{json.dumps(CHART_IDS)}.map(id => document.getElementById(id).className)")
    assert notes == ["nodata"] * len(CHART_IDS)
    assert browser.evaluate("document.getElementById('simulated-banner').textContent").startswith(
        "SIMULATED DATA"
    )


def test_browser_harness_reports_errors_and_requests(browser, tmp_path):
    bad = (
        "<!DOCTYPE html><title>t</title><script>console.error('boom'); nope();</script>"
        '<img src="http://127.0.0.1:9/x.png">'
    )
    page = load(browser, tmp_path, bad)
    assert any("boom" in e for e in page.errors) and any("nope" in e for e in page.errors)
    assert "http://127.0.0.1:9/x.png" in page.requests


EVENTS_STATE = """(() => {
  const chart = document.getElementById('chart-util-timeseries').getBoundingClientRect();
  const own = el => [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('');
  return {
    pwned: typeof window.__pwned, scripts: document.scripts.length, imgs: document.images.length,
    chart: {x: chart.x, w: chart.width},
    markers: [...document.querySelectorAll('#chart-util-timeseries .event-marker')].map(g => {
      const box = g.querySelector('.event-line').getBoundingClientRect();
      return {cls: g.getAttribute('class'), x: box.x, h: box.height,
              title: g.querySelector(':scope > title').textContent};
    }),
    rows: [...document.querySelectorAll('#events-table tbody tr')].map(tr => [...tr.cells].map(own)),
    counts: [...document.querySelectorAll('#event-counts tbody tr')].map(tr => [...tr.cells].map(own)),
  };
})()"""


def test_browser_draws_event_markers_and_table_without_running_data(browser, tmp_path, event_report):
    html = render_html(event_report)
    no_csp = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    for name, doc in [("events-no-csp.html", no_csp), ("events.html", html)]:
        page = load(browser, tmp_path, doc, name)
        assert page.errors == [], name
        assert page.requests == [page.url], name
        state = browser.evaluate(EVENTS_STATE)
        assert state["pwned"] == "undefined" and state["scripts"] == 0 and state["imgs"] == 0, name
        kinds = [m["cls"].removeprefix("event-marker ev-") for m in state["markers"]]
        assert kinds == EVENT_KINDS, name
        chart = state["chart"]
        for m in state["markers"]:  # drawn, visible and inside the chart's box
            assert m["h"] > 100 and chart["x"] <= m["x"] <= chart["x"] + chart["w"], m
        assert [m["x"] for m in state["markers"]] == sorted(m["x"] for m in state["markers"])
        assert state["markers"][2]["title"].startswith("2025-06-03 12:01:30 UTC · endpoint_down")
        assert f"subject: {EVIL_MODEL}" in state["markers"][2]["title"]  # shown as text, not run
        assert [r[2] for r in state["rows"]] == list(EVENT_KINDS)
        assert state["rows"][1] == ["2025-06-03 12:01:00 UTC", "h1", "gpu_lost", "GPU-b", "fell off the bus"]
        assert state["rows"][2][3:] == [EVIL_MODEL, EVIL_GPU]
        assert state["counts"] == [
            ["sampler_start", "2"],
            ["endpoint_down", "1"],
            ["endpoint_up", "1"],
            ["gpu_lost", "1"],
        ]
