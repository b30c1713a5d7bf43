"""``recommend --mode live``: measure the current deployment with the replay client.

The peak-hour sample the simulator replays for the current configuration (``PeakReplay.requests(R)``:
one replica's share of the recorded peak when ``R`` replicas serve it today) is sent to ``--endpoint``
with ``gpuaudit replay``'s client, at the sample's arrival times (streaming, ``max_tokens`` = output
length, ``ignore_eos``). The endpoint is taken to be **one replica** of today's deployment (one vLLM
server); ``--live-duration S`` sends only the requests due in the first ``S`` wall-clock seconds.
Prefix-cache hits of the sample (``cached_prefix_len``) are reproduced by one shared prompt prefix of
that many tokens (in 16-token blocks), which the server's prefix cache then serves.

Time scale: a serve-sim endpoint started with ``--time-scale F`` runs ``F``× real time; the requests
are then sent ``F``× as fast and every measured time is divided by ``F`` (throughputs multiplied).
The default is what the server reports at ``/sim/config`` (serve-sim), else 1 (a real vLLM server).

What is measured (client side, in the endpoint's time, per replica):

- p50/p95 TTFT and TPOT and their means (``vllm bench serve``'s definitions, ``replay.results``);
- output tokens/s while requests were arriving (the simulator's ``window_throughput``);
- busy fraction: the share of the run (first send to last completion) with at least one request in
  flight; the most requests in flight at once.

These replace the simulator's figures for the current configuration (its row is labelled
``measured (live)``), and the simulator's correction factors are fitted to the measurement
(on the requests as they were really sent: the TPOT factor with ``fit_results.fit_calibration``, and
the client-visible TTFT overhead of every GPU family, see ``calibrate_live``) so that every other
candidate is predicted consistently with it. KV capacity, running batch,
preemptions and capacity stay the (corrected) simulator's, or the server's KV blocks when its
``/metrics`` reports them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.calibrate_current import CalibrationReport
from gpuaudit.recommend.calibration import Calibration
from gpuaudit.recommend.current import CurrentConfig
from gpuaudit.recommend.search import Evaluation
from gpuaudit.recommend.simulator import SimRequest

LABEL = "measured (live)"
BLOCK_TOKENS = 16
PROBE_TIMEOUT_S = 5.0
MIN_REQUESTS = 20


@dataclass(frozen=True)
class LiveOptions:
    endpoint: str
    duration_s: float | None = None  # wall-clock seconds of sending (None: the whole sample)
    time_scale: float | None = None  # None: the server's (serve-sim) or 1


@dataclass(frozen=True)
class LiveMeasurement:
    """The current deployment measured at the endpoint (times in the endpoint's time ÷ time_scale)."""

    endpoint: str
    served_model: str
    time_scale: float
    sent: int
    completed: int
    failed: int
    errors_by_status: dict[str, int]
    wall_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    tpot_p50_ms: float
    tpot_p95_ms: float
    mean_ttft_ms: float
    mean_tpot_ms: float
    output_tok_per_s: float  # one replica, while requests were arriving
    request_rate_per_s: float  # offered, over the sending window
    busy_frac: float
    max_in_flight: int
    kv_capacity_tokens: int | None  # from the server's cache_config_info, when it has one
    requests: tuple[SimRequest, ...] = field(repr=False)  # as sent (arrival = start ÷ time scale)
    server: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("requests", "server")}
        out = {k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}
        return out | {"simulated_server": bool(self.server.get("server"))}


def base_url(endpoint: str) -> str:
    """The server's base URL (ConfigError, exit 2, unless ``endpoint`` is an http(s) URL)."""
    from gpuaudit.replay.client import ReplayOptions

    return ReplayOptions(endpoint, "-").base_url


def _loopback(url: str) -> bool:
    from gpuaudit.replay.client import _loopback as loopback

    return loopback(url)


def _client(endpoint: str) -> Any:
    import httpx

    return httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=not _loopback(endpoint))


def served_models(base_url: str) -> list[str]:
    """The ``/v1/models`` ids; DataError naming the URL when the server cannot be reached."""
    import httpx

    try:
        with _client(base_url) as client:
            resp = client.get(base_url + "/v1/models")
    except httpx.HTTPError as exc:
        reason = (str(exc).splitlines() or [""])[0]
        raise DataError(
            f"cannot reach --endpoint {base_url}: {type(exc).__name__}" + (f": {reason}" if reason else ""),
            hint="is the current deployment's vLLM server running there? check --endpoint",
        ) from exc
    if resp.status_code != 200:
        return []  # not every OpenAI-compatible server lists its models
    try:
        data = resp.json().get("data") or []
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError):
        return []


def pick_served_model(served: Sequence[str], wanted: Sequence[str], base_url: str) -> str:
    """The first of ``wanted`` (model_name, checkpoint id) the server serves, or its only model."""
    for name in wanted:
        if not served or name in served:
            return name
    if len(served) == 1:
        return served[0]
    raise ConfigError(
        f"{base_url} serves {', '.join(served)}, not {wanted[0]}",
        hint="point --endpoint at a server of the recorded model (or pass --model to pick it)",
    )


def _server_time_scale(info: dict[str, Any], wanted: float | None, base_url: str) -> float:
    reported = (info.get("server") or {}).get("time_scale")
    if wanted is None:
        return float(reported) if reported else 1.0
    if wanted <= 0:
        raise ConfigError(f"--time-scale must be > 0, got {wanted}")
    if reported and not math.isclose(float(reported), wanted, rel_tol=1e-6):
        raise ConfigError(
            f"--time-scale {wanted:g} differs from the {reported:g} that {base_url} reports",
            hint="leave --time-scale out to use the server's",
        )
    return wanted


def to_replay_requests(reqs: Sequence[SimRequest]) -> list[Any]:
    """Replay requests from simulator requests: times from the first arrival; the cached prefix as
    shared leading 16-token blocks (the same hash ids for every request, so they hit the cache)."""
    from gpuaudit.replay.trace import ReplayRequest

    t0 = reqs[0].arrival_s if reqs else 0.0
    out = []
    for r in reqs:
        shared = min(round(r.cached_prefix_len / BLOCK_TOKENS), r.input_len // BLOCK_TOKENS)
        out.append(ReplayRequest(r.arrival_s - t0, r.input_len, r.output_len, tuple(range(shared))))
    return out


def busy_and_peak(starts: Sequence[float], ends: Sequence[float]) -> tuple[float, int]:
    """Share of [first start, last end] with at least one request in flight; most in flight at once."""
    if not starts:
        return math.nan, 0
    events = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends], key=lambda x: (x[0], x[1]))
    level = peak = 0
    busy = 0.0
    last = events[0][0]
    for t, step in events:
        if level > 0:
            busy += t - last
        level += step
        peak = max(peak, level)
        last = t
    span = max(ends) - min(starts)
    return (busy / span if span > 0 else math.nan), peak


def window_tok_per_s(
    starts: Sequence[float], ttfts: Sequence[float], e2els: Sequence[float], outs: Sequence[int]
) -> float:
    """``search.window_throughput`` on measured requests (same definition, see there)."""
    if len(starts) < 2 or max(starts) <= min(starts):
        return math.nan
    t0, t1 = min(starts), max(starts)
    made = 0.0
    for s, ft, e, n in zip(starts, ttfts, e2els, outs, strict=True):
        first, done = s + ft, s + e
        if t1 >= first:
            made += 1.0 + (n - 1.0) * min(max((t1 - first) / max(done - first, 1e-9), 0.0), 1.0)
    return made / (t1 - t0)


def measure(opts: LiveOptions, requests: Sequence[SimRequest], models: Sequence[str]) -> LiveMeasurement:
    """Send ``requests`` to the endpoint and measure them (see module doc)."""
    from gpuaudit.replay.client import ReplayOptions, replay
    from gpuaudit.replay.probe import probe_server

    base = ReplayOptions(opts.endpoint, models[0])
    served = pick_served_model(served_models(base.base_url), models, base.base_url)
    info = probe_server(base.base_url, timeout_s=PROBE_TIMEOUT_S, trust_env=not _loopback(base.base_url))
    scale = _server_time_scale(info, opts.time_scale, base.base_url)
    ropts = replace(base, model=served, time_scale=scale, duration_s=opts.duration_s)
    run = replay(to_replay_requests(requests), ropts)
    return _summarize(run, ropts, requests, info)


def _summarize(run: Any, ropts: Any, requests: Sequence[SimRequest], info: dict[str, Any]) -> LiveMeasurement:
    from collections import Counter

    from gpuaudit.replay.results import bench_result

    done = [o for o in run.outcomes if o.ok]
    failed = [o for o in run.outcomes if not o.ok]
    errors = dict(sorted(Counter(str(o.status) for o in failed).items()))
    if not done:
        counts = ", ".join(f"{k}: {v}" for k, v in errors.items()) or "nothing was sent"
        raise DataError(
            f"no request to {ropts.base_url} succeeded ({counts})",
            hint=f"is it serving {ropts.model!r}? try `gpuaudit replay` against it",
        )
    b = bench_result(run, ropts)
    f = ropts.time_scale
    starts = [o.start_s / f for o in done]
    ttfts = [o.ttft_s / f for o in done]
    e2els = [o.latency_s / f for o in done]
    busy, peak = busy_and_peak(starts, [s + e for s, e in zip(starts, e2els, strict=True)])
    sent_starts = [o.start_s / f for o in run.outcomes]
    span = max(sent_starts) - min(sent_starts)
    t0 = min(starts)
    sims = tuple(
        SimRequest(s - t0, requests[o.index].input_len, requests[o.index].output_len,
                   requests[o.index].cached_prefix_len)
        for s, o in sorted(zip(starts, done, strict=True), key=lambda x: x[0])
    )  # fmt: skip
    cache = info.get("cache_config") or {}
    try:
        kv = int(cache["num_gpu_blocks"]) * int(cache.get("block_size") or BLOCK_TOKENS)
    except (KeyError, TypeError, ValueError):
        kv = None
    return LiveMeasurement(
        endpoint=ropts.base_url, served_model=ropts.model, time_scale=f, sent=len(run.outcomes),
        completed=len(done), failed=len(failed), errors_by_status=errors, wall_s=run.duration_s,
        ttft_p50_ms=b["median_ttft_ms"] / f, ttft_p95_ms=b["p95_ttft_ms"] / f,
        tpot_p50_ms=b["median_tpot_ms"] / f, tpot_p95_ms=b["p95_tpot_ms"] / f,
        mean_ttft_ms=b["mean_ttft_ms"] / f, mean_tpot_ms=b["mean_tpot_ms"] / f,
        output_tok_per_s=window_tok_per_s(starts, ttfts, e2els, [o.output_len for o in done]),
        request_rate_per_s=(len(run.outcomes) - 1) / span if span > 0 else math.nan,
        busy_frac=busy, max_in_flight=peak, kv_capacity_tokens=kv, requests=sims, server=info,
    )  # fmt: skip


def calibrate_live(
    current: CurrentConfig, m: LiveMeasurement, base: Calibration
) -> tuple[Calibration, CalibrationReport]:
    """The simulator corrected to the live measurement, re-simulating the requests as they were sent:
    the TPOT factor (decode part of every step) from ``fit_results.fit_calibration``, then the
    client-visible TTFT overhead (network, HTTP, tokenization: outside the engine, the same for every
    GPU) shifted on every GPU family by the mean TTFT still unexplained. A measured TTFT is client side,
    so it is not read as slower prefill (that would distort TPOT through mixed prefill/decode steps)."""
    from gpuaudit.recommend.fit_results import Measurement, fit_calibration

    notes = [
        f"{LABEL}: {m.completed} requests to {m.endpoint} ({m.served_model}) in {m.wall_s:.1f} s"
        + (f" at time scale {m.time_scale:g}" if m.time_scale != 1 else "")
        + (f", {m.failed} failed" if m.failed else "")
        + "; the current configuration's figures are measured, the others simulated with the simulator "
        "corrected to this measurement (the recorded histograms are not used)"
    ]
    if m.completed < MIN_REQUESTS:
        notes.append(f"only {m.completed} requests measured: the p95 figures are rough (use a longer run)")
    if not math.isfinite(m.mean_tpot_ms):
        from gpuaudit.recommend.calibrate_current import uncalibrated

        report = uncalibrated("no request produced more than one token: simulator not corrected")
        return base, replace(report, notes=(*notes, *report.notes))
    cfg = current.engine_config()
    meas = Measurement(
        path=f"live:{m.endpoint}", cfg=cfg, requests=m.requests, concurrency=None,
        tpot_ms=m.mean_tpot_ms, ttft_ms=m.mean_ttft_ms, output_throughput=m.output_tok_per_s,
    )  # fmt: skip
    fit = fit_calibration([meas], base, ttft="overhead")  # its TPOT factor; the overhead is redone below
    cal = replace(fit.calibration, ttft_overhead_s=base.ttft_overhead_s, overheads=dict(base.overheads))
    before, mid = fit.rows[0]["before"], _predict(meas, cal)
    shift_s = (m.mean_ttft_ms - mid["mean_ttft_ms"]) / 1000.0
    cal = shift_overheads(cal, shift_s)
    after = _predict(meas, cal)
    sign = "+" if shift_s >= 0 else "−"
    notes.append(
        f"TTFT: client-visible overhead {sign}{abs(shift_s) * 1e3:.1f} ms on every GPU "
        f"(now {cal.overhead_s(cfg.gpu) * 1e3:.1f} ms on {cfg.gpu.name})"
    )
    report = CalibrationReport(
        tpot_factor=fit.tpot_factor, ttft_factor=1.0,
        observed_mean_tpot_ms=m.mean_tpot_ms, observed_mean_ttft_ms=m.mean_ttft_ms,
        predicted_mean_tpot_ms=before["mean_tpot_ms"], predicted_mean_ttft_ms=before["mean_ttft_ms"],
        corrected_mean_tpot_ms=after["mean_tpot_ms"], corrected_mean_ttft_ms=after["mean_ttft_ms"],
        observed_output_tok_per_s=m.output_tok_per_s * current.replicas,
        predicted_output_tok_per_s=before["output_throughput"] * current.replicas,
        observed_kv_tokens=m.kv_capacity_tokens or current.observed_kv_tokens,
        predicted_kv_tokens=_kv_tokens(cfg), simulations=fit.iterations + 4, notes=tuple(notes),
    )  # fmt: skip
    return cal, report


def shift_overheads(cal: Calibration, shift_s: float) -> Calibration:
    """Every GPU family's client-visible TTFT overhead moved by ``shift_s`` (never below 0)."""
    return replace(
        cal,
        ttft_overhead_s=max(0.0, cal.ttft_overhead_s + shift_s),
        overheads={k: max(0.0, v + shift_s) for k, v in cal.overheads.items()},
    )


def _predict(meas: Any, cal: Calibration) -> dict[str, float]:
    from gpuaudit.recommend.simulator import simulate

    b = simulate(meas.cfg, list(meas.requests), calibration=cal).to_bench_dict()
    return {k: float(b[k]) for k in ("mean_tpot_ms", "mean_ttft_ms", "output_throughput")}


def _kv_tokens(cfg: Any) -> int | None:
    from gpuaudit.recommend.memory import kv_capacity
    from gpuaudit.recommend.simulator import DoesNotFit

    try:
        return kv_capacity(cfg).tokens
    except DoesNotFit:
        return None


def measured_evaluation(sim: Evaluation, m: LiveMeasurement) -> Evaluation:
    """The current configuration's evaluation with the measured figures in place of the simulated ones."""
    return replace(
        sim,
        ttft_p95_ms=m.ttft_p95_ms,
        tpot_p95_ms=m.tpot_p95_ms,
        ttft_p50_ms=m.ttft_p50_ms,
        tpot_p50_ms=m.tpot_p50_ms,
        output_tok_per_s=m.output_tok_per_s * sim.replicas,
        busy_frac=m.busy_frac,
        max_in_flight=m.max_in_flight,
        kv_capacity_tokens=m.kv_capacity_tokens or sim.kv_capacity_tokens,
    )


def annotate(d: dict[str, Any], m: LiveMeasurement, simulated: Evaluation | None) -> None:
    """Label the recommendation dict: the current row is measured (live); the rest simulated."""
    d["mode"] = "live"
    d["label"] = f"simulated prediction, except the current configuration: {LABEL}"
    if d.get("current"):
        d["current"]["label"] = LABEL
        d["current"]["measured"] = m.to_dict()
        if simulated is not None:
            d["current"]["simulated_p95_ttft_ms"] = round(simulated.ttft_p95_ms, 2)
            d["current"]["simulated_p95_tpot_ms"] = round(simulated.tpot_p95_ms, 2)
