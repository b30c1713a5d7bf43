"""`gpuaudit workload`: the workload a dataset recorded, and a synthetic trace that replays it."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("workload")(workload)


def workload(
    dataset: Path = typer.Argument(..., help="Dataset directory written by `gpuaudit sample`."),
    out: Path | None = typer.Option(
        None, "--out", help="Write a synthetic trace JSONL (timed_trace style) here."
    ),
    hours: float | None = typer.Option(None, "--hours", help="Trace length (default: the whole recording)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the synthetic trace."),
    model: str | None = typer.Option(None, "--model", help="The model_name to extract (several models)."),
    fmt: str = typer.Option("table", "--format", help="table|json"),
) -> None:
    """Arrival rates, request lengths, prefix hits and the peak hour; optionally a replay trace."""
    from gpuaudit.errors import ConfigError
    from gpuaudit.recommend.current import pick_model
    from gpuaudit.recommend.workload import read_engine_frame, select_model, workload_from_frame
    from gpuaudit.recommend.workload_trace import write_trace
    from gpuaudit.render import recommend_workload as render

    if fmt not in ("table", "json"):
        raise ConfigError(f"--format {fmt!r} is not one of table, json")
    frame = read_engine_frame(dataset)
    label, _ = pick_model(sorted(set(frame["model_name"])), model)
    w = workload_from_frame(select_model(frame, label or model), source=str(dataset))
    trace = None
    if out is not None:
        t = write_trace(w, out, hours=hours, seed=seed)
        trace = {"path": str(t.path), "meta_path": str(t.meta_path), "requests": t.requests,
                 "peak_requests": t.peak_requests, "start": t.window.start.isoformat(),
                 "end": t.window.end.isoformat()}  # fmt: skip
        typer.echo(f"wrote {t.requests} requests ({t.peak_requests} in the peak hour) to {t.path}", err=True)
    summary = w.summary()
    typer.echo(
        render.render_workload_json(summary, trace)
        if fmt == "json"
        else render.render_workload_table(summary, trace),
        nl=False,
    )
