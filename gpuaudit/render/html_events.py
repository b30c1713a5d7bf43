"""Events in the HTML report: markers on the utilization chart and the "Events" table.

The report's ``events`` list (sampler starts and stops, GPUs lost, endpoints down and up,
fields unsupported) explains why a utilization line stops. ``event_counts`` counts every
event in the window per kind, while ``events`` holds only the first ones by time (the
producer caps it). Both are drawn here. Every string from the data goes through
:func:`esc`. CSS classes and colors come from fixed tables, never from the data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpuaudit.render.html_svg import as_list, as_map, esc, fmt_time, num, parse_time

EVENT_COLORS = {
    "gpu_lost": "#b91c1c",
    "endpoint_down": "#c2410c",
    "endpoint_up": "#15803d",
    "sampler_start": "#334155",
    "sampler_stop": "#94a3b8",
    "field_unsupported": "#7c3aed",
    "other": "#0f766e",
}
EVENT_LABELS = {
    "gpu_lost": "GPU lost",
    "endpoint_down": "endpoint down",
    "endpoint_up": "endpoint up",
    "sampler_start": "sampler started",
    "sampler_stop": "sampler stopped",
    "field_unsupported": "field unsupported",
    "other": "other event",
}
MAX_EVENT_MARKERS = 200  # markers on the chart; events at the same pixel and kind share one
MAX_EVENT_ROWS = 200  # rows in the table (the report itself lists the first 200 by time)
MAX_TOOLTIP_LINES = 6


@dataclass(frozen=True, slots=True)
class Ev:
    """One event, its strings already coerced ('' when missing); ``t`` in epoch seconds or None."""

    t: float | None
    ts: str
    host: str
    source: str
    kind: str
    subject: str
    detail: str

    @property
    def key(self) -> str:
        """The kind if it is one of ours, else 'other' (safe as a CSS class and a color key)."""
        return self.kind if self.kind in EVENT_COLORS else "other"

    @property
    def when(self) -> str:
        return fmt_time(self.t) if self.t is not None else (self.ts or "unknown time")

    def line(self) -> str:
        parts = [self.when, self.kind or "unknown kind", self.subject, self.detail]
        where = f" (host {self.host})" if self.host else ""
        return " · ".join(p for p in parts if p) + where


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def parse_events(events: Any) -> list[Ev]:
    """The report's events as :class:`Ev`, by time (unparseable times last, in list order)."""
    out = []
    for raw in as_list(events):
        if not isinstance(raw, Mapping):
            continue
        out.append(
            Ev(
                parse_time(raw.get("ts")),
                _str(raw.get("ts")),
                *(_str(raw.get(k)) for k in ("host", "source", "kind", "subject", "detail")),
            )
        )
    return sorted(out, key=lambda e: (e.t is None, e.t or 0.0))


def event_counts(report: Mapping[str, Any], events: list[Ev]) -> dict[str, int]:
    """Events per kind over the whole window: ``event_counts`` when present, else counted from the list."""
    counts: dict[str, int] = {}
    for kind, n in as_map(report.get("event_counts")).items():
        v = num(n)
        if v is not None and v >= 0:
            counts[str(kind)] = int(v)
    if not counts:
        for e in events:
            counts[e.kind or "None"] = counts.get(e.kind or "None", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _tooltip(group: list[Ev]) -> str:
    if len(group) == 1:
        e = group[0]
        lines = [f"{e.when} · {e.kind or 'unknown kind'}"]
        fields = (("subject", e.subject), ("detail", e.detail), ("host", e.host))
        lines += [f"{k}: {v}" for k, v in fields if v]
        return "\n".join(lines)
    head = f"{len(group)} {group[0].kind or 'unknown kind'} events"
    lines = [head, *(e.line() for e in group[:MAX_TOOLTIP_LINES])]
    if len(group) > MAX_TOOLTIP_LINES:
        lines.append(f"… and {len(group) - MAX_TOOLTIP_LINES} more (see the Events table)")
    return "\n".join(lines)


def event_markers(
    events: list[Ev], x_of: Callable[[float], float], y0: float, y1: float
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """SVG markers (a flag above a thin vertical line, one per kind and pixel column) and legend keys.

    ``events`` must already be limited to the chart's time range and to MAX_EVENT_MARKERS.
    """
    groups: dict[tuple[str, int], list[Ev]] = {}
    for e in events:
        if e.t is not None:
            groups.setdefault((e.kind, round(x_of(e.t))), []).append(e)
    out = ['<g class="events">']
    used: list[str] = []
    for _, group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        key = group[0].key
        color = EVENT_COLORS[key]
        used += [key] if key not in used else []
        x = x_of(group[0].t or 0.0)
        out.append(f'<g class="event-marker ev-{key}" data-count="{len(group)}">')
        out.append(f"<title>{esc(_tooltip(group))}</title>")
        xs = f'x1="{x:.1f}" x2="{x:.1f}"'
        out.append(f'<line class="event-hit" {xs} y1="{y0 - 12:.1f}" y2="{y1:.1f}"/>')
        out.append(f'<line class="event-line" {xs} y1="{y0:.1f}" y2="{y1:.1f}" stroke="{color}"/>')
        out.append(
            f'<path class="event-flag" d="M{x - 4:.1f},{y0 - 12:.1f} L{x + 4:.1f},{y0 - 12:.1f} '
            f'L{x:.1f},{y0 - 3:.1f} Z" fill="{color}"/></g>'
        )
    out.append("</g>")
    return out, [(f"event: {EVENT_LABELS[k]}", EVENT_COLORS[k], "event") for k in used]


def markers_note(listed: int, marked: int, outside: int) -> str:
    """Why some listed events have no marker on the chart ('' when every one has)."""
    if marked == listed:
        return ""
    parts = []
    if outside:
        parts.append(f"{outside} have no time inside the chart's range")
    capped = listed - marked - outside
    if capped > 0:
        parts.append(f"only the first {MAX_EVENT_MARKERS} are marked")
    text = f"{marked} of {listed} listed events are marked ({'; '.join(parts)}); all are in the Events table."
    return f'<p class="note" id="event-markers-note">{esc(text)}</p>'


def _kind_cell(e: Ev) -> str:
    sw = f'<i class="sw" style="background:{EVENT_COLORS[e.key]}"></i>'
    src = f'<div class="subline">{esc(e.source)}</div>' if e.source else ""
    return f'<td class="kind">{sw}{esc(e.kind or "—")}{src}</td>'


def _counts_table(counts: Mapping[str, int]) -> str:
    rows = "".join(
        f'<tr><td class="kind"><i class="sw" style="background:'
        f'{EVENT_COLORS[k if k in EVENT_COLORS else "other"]}"></i>{esc(k)}</td>'
        f'<td class="num">{n:,}</td></tr>'
        for k, n in counts.items()
    )
    return (
        '<table class="event-counts" id="event-counts"><thead><tr><th>Kind</th>'
        f'<th class="num">Events</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def events_body(events: list[Ev], counts: Mapping[str, int]) -> tuple[str, str]:
    """(the Events section's HTML, its note): counts per kind, then one table row per listed event."""
    total = sum(counts.values())
    if not events and not total:
        return '<p class="nodata" id="events-table">No events in this window.</p>', ""
    shown = events[:MAX_EVENT_ROWS]
    notes = [
        "What the sampler recorded: sampler starts and stops, GPUs lost, endpoints down and up, fields "
        "the device does not support. Those inside the utilization chart's time range are marked on it."
    ]
    if total > len(events):
        notes.append(
            f"The report lists the first {len(events):,} of {total:,} events by time; "
            f"{total - len(events):,} were left out. The counts per kind cover all of them."
        )
    if len(events) > len(shown):
        notes.append(f"This table shows the first {len(shown):,} of the {len(events):,} listed.")
    rows = "".join(
        f'<tr class="event ev-{e.key}"><td class="time">{esc(e.when)}</td><td>{esc(e.host or "—")}</td>'
        f"{_kind_cell(e)}<td>{esc(e.subject or '—')}</td>"
        f'<td class="detail">{esc(e.detail or "—")}</td></tr>'
        for e in shown
    )
    table = (
        '<div class="table-wrap"><table id="events-table"><thead><tr><th>Time (UTC)</th><th>Host</th>'
        f"<th>Kind</th><th>Subject</th><th>Detail</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
    if not shown:
        table = '<p class="nodata" id="events-table">The report counts events but lists none.</p>'
    return _counts_table(counts) + table, " ".join(notes)
