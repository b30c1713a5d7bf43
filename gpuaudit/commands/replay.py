"""`gpuaudit replay`: send a recorded workload (trace or dataset) to an endpoint and measure it."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from gpuaudit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from gpuaudit.replay.client import Progress


class Api(StrEnum):
    COMPLETIONS = "completions"
    CHAT = "chat"


class OutFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


SUMMARY_ROWS = (
    ("Successful requests", "completed", "{:d}"),
    ("Failed requests", "failed", "{:d}"),
    ("Duration (s)", "duration", "{:.2f}"),
    ("Total input tokens", "total_input_tokens", "{:d}"),
    ("Total generated tokens", "total_output_tokens", "{:d}"),
    ("Request throughput (req/s)", "request_throughput", "{:.2f}"),
    ("Output token throughput (tok/s)", "output_throughput", "{:.2f}"),
    ("Request goodput (req/s)", "request_goodput", "{:.2f}"),
    ("Mean / P99 TTFT (ms)", ("mean_ttft_ms", "p99_ttft_ms"), "{:.2f} / {:.2f}"),
    ("Mean / P99 TPOT (ms)", ("mean_tpot_ms", "p99_tpot_ms"), "{:.2f} / {:.2f}"),
    ("Mean / P99 ITL (ms)", ("mean_itl_ms", "p99_itl_ms"), "{:.2f} / {:.2f}"),
    ("Mean / P99 E2E latency (ms)", ("mean_e2el_ms", "p99_e2el_ms"), "{:.2f} / {:.2f}"),
)


def render_summary(res: dict[str, Any]) -> str:
    """vllm bench serve's closing table, compact."""
    title = "Replay result (partial)" if res.get("partial") else "Replay result"
    lines = [f"{f' {title} ':=^56}"]
    for label, keys, fmt in SUMMARY_ROWS:
        if keys == "request_goodput" and res.get(keys) is None:
            continue  # no --goodput
        vals = [res.get(k) for k in ((keys,) if isinstance(keys, str) else keys)]
        text = "n/a" if any(v is None for v in vals) else fmt.format(*vals)
        lines.append(f"{label + ':':<40}{text:>16}")
    if res.get("errors_by_status"):
        lines.append(
            "Errors by status: " + ", ".join(f"{k}: {v}" for k, v in res["errors_by_status"].items())
        )
    return "\n".join([*lines, "=" * 56])


def parse_metadata(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--metadata expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


@contextmanager
def sigint_stops(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the replay then writes a partial result) instead of raising."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[Progress], None] | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = (
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*cols, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replay", total=total, info="")

        def update(p: Any) -> None:
            bar.update(task, completed=p.done + p.failed, info=f"sent {p.sent} · failed {p.failed}")

        yield update


def write_json(path: Path, obj: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise DataError(
            f"cannot write {path}: {exc.strerror or exc}", hint="pass --out a writable path"
        ) from exc


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_cmd(
        source: Path = typer.Argument(
            ...,
            help="Trace JSONL (timestamp, input_length, output_length[, hash_ids]) "
            "or a gpuaudit dataset directory.",
        ),
        endpoint: str = typer.Option(..., "--endpoint", help="Server base URL, e.g. http://127.0.0.1:8000."),
        model: str = typer.Option(
            ..., "--model", help="Model name the server serves (the request's `model`)."
        ),
        api: Api = typer.Option(Api.COMPLETIONS, "--api", help="/v1/completions or /v1/chat/completions."),
        time_scale: float = typer.Option(
            1.0, "--time-scale", help="Multiply trace timestamps (0.5 = 2x faster)."
        ),
        max_concurrency: int | None = typer.Option(None, "--max-concurrency", help="Cap requests in flight."),
        duration: float | None = typer.Option(
            None, "--duration", help="Send only requests due in S seconds."
        ),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write the result JSON here."),
        save_detailed: bool = typer.Option(
            False, "--save-detailed", help="Add per-request TTFT/ITL/text arrays."
        ),
        ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos", help="Send ignore_eos (vLLM)."),
        hours: float = typer.Option(
            1.0, "--hours", help="DATASET: replay this many hours (from the peak hour)."
        ),
        dataset_model: str | None = typer.Option(None, "--dataset-model", help="DATASET: the model to take."),
        metadata: list[str] = typer.Option(
            [], "--metadata", help="KEY=VALUE stored in the result; repeatable."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the prompt text (and of a DATASET's trace)."),
        goodput: list[str] = typer.Option(
            [],
            "--goodput",
            help="SLO METRIC:MS (ttft, tpot, e2el), repeatable: request_goodput = completed requests "
            "meeting all of them per second, as vllm bench serve --goodput.",
        ),
        fmt: OutFormat = typer.Option(OutFormat.TABLE, "--format", help="stdout: summary table or the JSON."),
    ) -> None:
        """Replay a trace or a recorded workload against an OpenAI-compatible server (vLLM, serve-sim)."""
        from gpuaudit.replay.client import ReplayOptions, replay
        from gpuaudit.replay.goodput import parse_goodput
        from gpuaudit.replay.probe import probe_server
        from gpuaudit.replay.results import bench_result, json_safe
        from gpuaudit.replay.trace import load_requests

        opts = ReplayOptions(
            endpoint, model, api.value, time_scale, max_concurrency, duration, ignore_eos, seed=seed
        )
        extra = parse_metadata(metadata)
        goodput_ms = parse_goodput(goodput)
        requests = load_requests(source, model=dataset_model, hours=hours, seed=seed)
        extra |= {"source": str(source)} | probe_server(opts.base_url)
        stop = threading.Event()
        with sigint_stops(stop), progress_bar(len(requests), sys.stderr.isatty()) as progress:
            run = replay(requests, opts, stop=stop, progress=progress)
        res = json_safe(bench_result(run, opts, detailed=save_detailed, extra=extra, goodput_ms=goodput_ms))
        if out is not None:
            write_json(out, res)
        print(json.dumps(res, indent=2) if fmt is OutFormat.JSON else render_summary(res))
        if stop.is_set():
            raise typer.Exit(130)
        if res["failed"] and not res["completed"]:
            counts = ", ".join(f"{k}: {v}" for k, v in res["errors_by_status"].items())
            raise DataError(f"no request succeeded ({counts})", hint=f"is {opts.base_url} serving {model!r}?")
