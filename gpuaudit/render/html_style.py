"""The HTML report's stylesheet, inlined into every report (no external CSS or fonts)."""

from __future__ import annotations

CSS = """
:root { color-scheme: light; --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --panel: #fff; }
* { box-sizing: border-box; }
body { margin: 0; background: #f1f5f9; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 24px 8px; }
footer { max-width: 1320px; margin: 0 auto; padding: 8px 24px 24px; color: var(--muted); font-size: 12px; }
h1 { font-size: 26px; margin: 0 0 6px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 0 0 4px; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f1f5f9;
  padding: 1px 5px; border-radius: 4px; white-space: nowrap; }
.simulated-banner { position: sticky; top: 0; z-index: 10; background: repeating-linear-gradient(-45deg,
  #b91c1c 0 18px, #991b1b 18px 36px); color: #fff; text-align: center; padding: 10px 16px; font-size: 15px;
  box-shadow: 0 2px 6px rgb(0 0 0 / 0.25); margin-bottom: 14px; border-radius: 0 0 8px 8px; }
.simulated-banner strong { letter-spacing: 0.12em; margin-right: 8px; font-size: 17px; }
header { margin-bottom: 16px; }
dl.meta { display: flex; flex-wrap: wrap; gap: 4px 28px; margin: 0; color: var(--muted); font-size: 13px; }
dl.meta div { display: flex; gap: 6px; } dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
.headlines { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px;
  margin-bottom: 18px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: 0.06em;
  font-weight: 600; }
.card .value { font-size: 26px; font-weight: 700; margin: 2px 0; font-variant-numeric: tabular-nums; }
.card .sub { color: var(--muted); font-size: 12px; }
#headline-idle-waste .value { color: #b45309; }
section, figure { background: var(--panel); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 18px; margin: 0 0 18px; }
section.charts, section.headlines { background: none; border: 0; padding: 0; }
figure { break-inside: avoid; }
.note { color: var(--muted); font-size: 12.5px; margin: 0 0 10px; max-width: 95ch; }
.nodata { color: var(--muted); font-style: italic; background: #f8fafc; border: 1px dashed #cbd5e1;
  border-radius: 8px; padding: 18px; text-align: center; margin: 6px 0; }
svg.chart { display: block; width: 100%; height: auto; font-size: 12px; overflow: visible; }
svg.chart text { fill: #475569; }
svg.chart .tick { font-size: 11px; font-variant-numeric: tabular-nums; }
svg.chart .axis-label { font-size: 11.5px; fill: var(--muted); }
svg.chart .row-label { font-size: 12px; fill: #1e293b; }
svg.chart .value { font-size: 11.5px; fill: #1e293b; font-weight: 600; }
svg.chart .grid line { stroke: var(--line); }
svg.chart .xgrid { stroke: #f1f5f9; }
svg.chart .series { fill: none; stroke-width: 1.7; stroke-linejoin: round; stroke-linecap: round; }
svg.chart .series.sm { stroke-width: 1.5; opacity: 0.8; }
svg.chart .points circle { fill-opacity: 0.55; }
svg.chart .seg { stroke: #fff; stroke-width: 1; }
svg.chart .seg-label { fill: #fff; font-size: 11px; font-weight: 600; }
svg.chart .seg-label.dark { fill: #1e293b; }
svg.chart .bar-out { fill: #0891b2; } svg.chart .bar-total { fill: #a5f3fc; }
svg.chart .event-line { stroke-width: 1.3; opacity: 0.85; }
svg.chart .event-hit { stroke: transparent; stroke-width: 9; pointer-events: stroke; }
svg.chart .event-marker:hover .event-line { stroke-width: 2.5; opacity: 1; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin-top: 8px; font-size: 12px; color: #334155; }
.legend .key { display: inline-flex; align-items: center; gap: 6px; }
.legend .sw { display: inline-block; width: 14px; height: 10px; border-radius: 2px; }
.legend .sw.line { height: 3px; width: 18px; }
.legend .sw.dashed { height: 3px; width: 18px;
  background: repeating-linear-gradient(90deg, #334155 0 6px, transparent 6px 9px) !important; }
.legend .sw.event { width: 3px; height: 14px; border-radius: 0; }
.legend .sw.hatch { background: repeating-linear-gradient(45deg, #94a3b8 0 2px, #f1f5f9 2px 5px); }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 12px; }
th, td { padding: 5px 7px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: #f8fafc; color: #334155; font-weight: 600; white-space: nowrap;
  position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.table-wrap td { white-space: nowrap; }
.subline { color: var(--muted); font-size: 11px; }
.table-wrap + h3 { margin-top: 16px; }
tbody tr:nth-child(even) td { background: #fbfdff; }
table.kv th { width: 28%; font-weight: 600; color: #334155; }
#findings-table { margin-top: 12px; }
#findings-table td:nth-child(2) { font-weight: 700; }
.evidence { color: #475569; margin-top: 2px; }
#findings-table ul { margin: 4px 0 0; padding-left: 18px; color: #475569; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 11px; font-weight: 700;
  text-transform: uppercase; letter-spacing: 0.04em; }
.badge.sev-critical { background: #fee2e2; color: #991b1b; }
.badge.sev-warning { background: #fef3c7; color: #92400e; }
.badge.sev-info { background: #dbeafe; color: #1e40af; }
.badge.sev-unknown { background: #e2e8f0; color: #334155; }
table.event-counts { width: auto; min-width: 260px; margin-bottom: 12px; }
td.kind .sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
#events-table td.detail { white-space: normal; min-width: 28ch; }
@media print { body { background: #fff; } .simulated-banner { position: static; }
  section, figure { break-inside: avoid; border-color: #cbd5e1; } }
"""
