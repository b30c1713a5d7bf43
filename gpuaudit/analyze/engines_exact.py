"""The row-by-row path for engine series that segments cannot handle: no
``counters_created_s`` (vLLM's multi-process mode has no ``_created`` samples), or a counter
that decreases without it changing. A window over the series computes every delta as the
definition says: positive deltas summed; a decrease or a ``counters_created_s`` change is a
restart, whose delta is the new value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpuaudit.analyze.engines import COUNTERS, HISTS, SERIES, SeriesKey, SeriesResult, Source, q


def _delta(col: str) -> str:
    c, p = q(col), q("p_" + col)
    return (
        f"CASE WHEN {c} IS NULL OR {p} IS NULL THEN 0 WHEN {c} < {p} OR restart THEN {c} ELSE {c} - {p} END"
    )


def exact_series(con: Any, src: Source, keys: Sequence[SeriesKey]) -> dict[SeriesKey, SeriesResult]:
    cols = sorted(set(COUNTERS.values()))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE want (host VARCHAR, endpoint VARCHAR, model_name VARCHAR, engine "
        "VARCHAR)"
    )
    con.executemany("INSERT INTO want VALUES (?, ?, ?, ?)", [list(k) for k in keys])
    cte, params = src.cte()
    by = ", ".join(SERIES)
    lags = ", ".join(f"LAG({q(c)} IGNORE NULLS) OVER w AS {q('p_' + c)}" for c in cols)
    hist_lags = ", ".join(
        f"LAG(CASE WHEN {q(h + '_count')} IS NOT NULL THEN t END IGNORE NULLS) OVER w AS {q('pt_' + h)}, "
        f"LAG(CASE WHEN {q(h + '_count')} IS NOT NULL THEN filename END IGNORE NULLS) OVER w AS "
        f"{q('pf_' + h)}"
        for h in HISTS
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE x AS WITH {cte}, l AS (
            SELECT src.*, coalesce(counters_created_s <> LAG(counters_created_s) OVER w, false) AS restart,
                   {lags},
                   {hist_lags}
            FROM src SEMI JOIN want USING ({by}) WINDOW w AS (PARTITION BY {by} ORDER BY t))
        SELECT *, {", ".join(f"{_delta(c)} AS {q('d_' + c)}" for c in cols)} FROM l""",
        params,
    )
    cur = con.execute(
        f"""SELECT {by}, count(*) AS n, min(t) AS first_t, max(t) AS last_t, bool_or(sim) AS sim,
               count(*) FILTER (WHERE restart OR generation_tokens_total < p_generation_tokens_total)
                   AS restarts,
               sum(kv_cache_usage_frac), count(kv_cache_usage_frac), max(kv_cache_usage_frac),
               sum(num_requests_running), count(num_requests_running),
               sum(num_requests_waiting), count(num_requests_waiting),
               {", ".join(f"sum({q('d_' + c)})" for c in cols)}
        FROM x GROUP BY ALL"""
    )
    out: dict[SeriesKey, SeriesResult] = {}
    for row in cur.fetchall():
        key: SeriesKey = tuple(row[:4])
        n, first, last, sim, restarts, kv_s, kv_n, kv_max, r_s, r_n, w_s, w_n, *sums = row[4:]
        inc = dict(zip(cols, sums, strict=True))
        out[key] = SeriesResult(
            samples=int(n),
            first_ms=int(first),
            last_ms=int(last),
            simulated=bool(sim),
            restarts=int(restarts),
            increases={name: float(inc[col] or 0.0) for name, col in COUNTERS.items()},
            gauges={
                "kv": (float(kv_s or 0.0), int(kv_n)),
                "running": (float(r_s or 0.0), int(r_n)),
                "waiting": (float(w_s or 0.0), int(w_n)),
            },
            kv_max=None if kv_max is None else float(kv_max),
            boundaries={h: [] for h in HISTS},
        )
    for h in HISTS:
        cnt, pcnt = q(h + "_count"), q("p_" + h + "_count")
        rows = con.execute(
            f"""SELECT {by}, t, filename, role FROM (
                SELECT {by}, min(t) AS t, arg_min(filename, t) AS filename, -1 AS role FROM x
                WHERE {cnt} IS NOT NULL
                GROUP BY ALL
                UNION ALL
                SELECT {by}, max(t), arg_max(filename, t), 1 FROM x WHERE {cnt} IS NOT NULL GROUP BY ALL
                UNION ALL
                SELECT {by}, {q("pt_" + h)}, {q("pf_" + h)}, 1 FROM x
                WHERE {cnt} IS NOT NULL AND {pcnt} IS NOT NULL AND ({cnt} < {pcnt} OR restart))"""
        ).fetchall()
        for *k, t, f, role in rows:
            key = tuple(k)
            if key in out:
                out[key].boundaries[h].append((int(t), str(f), int(role)))
    con.execute("DROP TABLE x")
    return out
