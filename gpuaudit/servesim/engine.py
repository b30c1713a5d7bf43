"""The simulated vLLM engine, run in real time on an asyncio loop.

The simulator's fast scheduler (``recommend.scheduler.run_engine``) replays a whole request list in
one go and cannot take requests that arrive while it runs, so this module drives the simulator's
*per-step* scheduler instead: ``recommend.reference._Ref`` (vLLM V1 rules: decodes first, chunked
prefill, FCFS admission under ``max_num_seqs`` and free KV blocks, recompute preemption) and its
``StepTimeModel``. Nothing of the scheduling rules or the step-time model is re-implemented here;
this driver only

1. moves requests that arrived (HTTP) into the scheduler's waiting queue at step boundaries,
2. asks the scheduler for the next step, times it with the step-time model,
3. sleeps until the step's simulated end (an absolute deadline: lateness does not accumulate; a step
   after an idle spell starts when its first request arrived, so host-side parsing time is not
   charged to the simulated GPU),
4. applies the step (the same bookkeeping as ``_Ref.step``) and hands each request its new tokens.

Aborts (client disconnects) are applied between steps: the request leaves the queue or the batch
and its KV blocks are freed. ``time_scale`` multiplies every simulated duration (0.5 = twice as fast).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpuaudit.recommend.reference import _Ref, _Req
from gpuaudit.recommend.steptime import StepFeatures

if TYPE_CHECKING:
    from gpuaudit.recommend.calibration import Calibration
    from gpuaudit.recommend.memory import KvCapacity
    from gpuaudit.recommend.simulator import EngineConfig
    from gpuaudit.servesim.metrics import VllmMetrics

MAX_LAG_S = 0.05  # behind schedule by more than this: restart the step chain from now
BUSY_HISTORY_S = 10.0


@dataclass(eq=False)
class LiveRequest:
    """One request in the engine; the HTTP handler reads ``events``: (tokens generated so far, wall
    time of the step that produced them), then None when the request is over."""

    rid: str
    prompt_tokens: int
    output_tokens: int  # tokens the engine will generate before it finishes
    max_tokens: int  # the request's max_tokens (for the params histogram)
    cached_tokens: int  # prompt tokens served from the prefix cache
    arrival_s: float  # wall clock (perf_counter) when the server received it
    finish_reason: str = "length"  # "length" (max_tokens reached) or "stop" (simulated EOS)
    events: asyncio.Queue[tuple[int, float] | None] = field(default_factory=asyncio.Queue)
    generated: int = 0
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    finished_s: float | None = None
    preemptions: int = 0
    aborted: bool = False


@dataclass(eq=False)
class _LiveReq(_Req):
    """The scheduler's request state, bound to its live request (identity equality)."""

    live: LiveRequest | None = None

    __eq__ = object.__eq__  # the parent dataclass compares fields; two requests are never equal
    __hash__ = object.__hash__


class _Scheduler(_Ref):
    """The simulator's per-step scheduler, fed incrementally (its request list starts empty)."""

    def __init__(self, cfg: EngineConfig, kv: KvCapacity, cal: Calibration) -> None:
        super().__init__(cfg, kv, [], cal)
        self.preempted: list[_Req] = []

    def preempt_last(self) -> _Req:
        victim = super().preempt_last()
        self.preempted.append(victim)
        return victim


@dataclass(frozen=True)
class EngineLoad:
    """What the engine is doing now (for /gpu-load and the gauges)."""

    busy_frac: float  # fraction of the last ``window_s`` spent executing steps
    window_s: float
    running: int
    waiting: int
    kv_usage_frac: float


class RealtimeEngine:
    """One simulated vLLM engine. Create and ``run()`` it inside a running event loop."""

    def __init__(
        self,
        cfg: EngineConfig,
        kv: KvCapacity,
        cal: Calibration,
        metrics: VllmMetrics,
        *,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.cfg, self.kv, self.metrics = cfg, kv, metrics
        self.sched = _Scheduler(cfg, kv, cal)
        self.time_scale = time_scale
        self.clock = clock
        self._arrivals: list[_LiveReq] = []
        self._aborts: list[LiveRequest] = []
        self._by_live: dict[int, _LiveReq] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self._busy: collections.deque[tuple[float, float]] = collections.deque()
        self.steps = 0

    # -- called by the HTTP side ---------------------------------------------------------------------
    def blocks_needed(self, total_tokens: int) -> int:
        return self.sched.blocks(total_tokens)

    def submit(self, live: LiveRequest) -> None:
        r = _LiveReq(live.arrival_s, live.prompt_tokens, live.output_tokens, live.cached_tokens, live=live)
        r.comp = r.cached = min(live.cached_tokens, live.prompt_tokens - 1)
        self._by_live[id(live)] = r
        self._arrivals.append(r)
        self._wake.set()

    def abort(self, live: LiveRequest) -> None:
        """Drop a request (client gone): applied at the next step boundary."""
        if live.finished_s is None and not live.aborted:
            live.aborted = True
            self._aborts.append(live)
            self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    @property
    def num_waiting(self) -> int:
        return len(self.sched.waiting) + len(self._arrivals)

    def load(self, window_s: float = 1.0) -> EngineLoad:
        now = self.clock()
        lo = now - window_s
        busy = sum(max(0.0, min(b, now) - max(a, lo)) for a, b in self._busy if b > lo)
        used = self.kv.blocks - self.sched.free
        return EngineLoad(
            busy_frac=min(1.0, busy / window_s),
            window_s=window_s,
            running=len(self.sched.running),
            waiting=self.num_waiting,
            kv_usage_frac=used / self.kv.blocks if self.kv.blocks else 0.0,
        )

    # -- the loop ------------------------------------------------------------------------------------
    async def run(self) -> None:
        chain_end: float | None = None  # wall time the previous step ended (simulated instant)
        last_end = -math.inf
        while not self._closed:
            self._take_arrivals()
            self._apply_aborts()
            s = self.sched
            if not s.running and not s.waiting:
                self._publish()
                self._wake.clear()
                if not self._arrivals and not self._aborts:
                    await self._wake.wait()
                chain_end = None
                continue
            now = self.clock()
            if chain_end is None:  # idle until now: the GPU would have started when the first request came
                first = min((r.arrival for r in s.waiting), default=now)
                start = min(now, max(last_end, first, now - MAX_LAG_S * self.time_scale))
            else:
                start = now if now - chain_end > MAX_LAG_S * self.time_scale else chain_end
            sched = s.schedule()
            self._note_preemptions()
            if not sched:  # the queue head cannot get blocks with nothing running: reject it
                self._reject_head()
                continue
            feats = s.features(sched)
            end = start + s.model.step(feats) * self.time_scale
            self._busy.append((start, end))
            delay = end - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            chain_end = last_end = end
            self._apply(sched, feats, start, end)

    def _take_arrivals(self) -> None:
        if self._arrivals:
            self.sched.waiting.extend(self._arrivals)
            self._arrivals.clear()

    def _apply_aborts(self) -> None:
        s = self.sched
        for live in self._aborts:
            r = self._by_live.pop(id(live), None)
            if r is None:
                continue
            if r in s.waiting:
                s.waiting.remove(r)
            elif r in s.running:
                s.running.remove(r)
                s.free += r.blk
                r.blk = 0
            elif r in self._arrivals:
                self._arrivals.remove(r)
            self.metrics.request_finished(live, "abort")
        self._aborts.clear()

    def _note_preemptions(self) -> None:
        for r in self.sched.preempted:
            live = getattr(r, "live", None)
            if live is not None:
                live.preemptions += 1
                self.metrics.preempted()
        self.sched.preempted.clear()

    def _reject_head(self) -> None:
        r = self.sched.waiting.popleft()
        live = getattr(r, "live", None)
        if live is not None:
            self._by_live.pop(id(live), None)
            live.finish_reason = "error"
            live.finished_s = self.clock()
            self.metrics.request_finished(live, "error")
            live.events.put_nowait(None)

    def _apply(self, sched: list[tuple[_Req, int]], feats: StepFeatures, start: float, end: float) -> None:
        """``_Ref.step``'s bookkeeping after the step, plus token delivery and metrics."""
        s = self.sched
        self.steps += 1
        prefill_tokens = 0
        generated = 0
        for r, c in sched:
            live = getattr(r, "live", None)
            if live is not None and live.scheduled_s is None:
                live.scheduled_s = start
                self.metrics.request_scheduled(live)
            if not r.decoding:
                prefill_tokens += c
            r.comp += c
            if r.comp != r.inl + r.gen:
                continue
            r.gen += 1
            r.decoding = True
            generated += 1
            if live is not None:
                self._deliver(live, end)
            if r.gen >= r.outl:
                s.running.remove(r)
                s.free += r.blk
                r.blk = 0
                if live is not None:
                    self._by_live.pop(id(live), None)
                    live.finished_s = end
                    self.metrics.request_finished(live, live.finish_reason)
                    live.events.put_nowait(None)
        self.metrics.step(prefill_tokens + generated)
        self._publish()
        cutoff = end - BUSY_HISTORY_S
        while self._busy and self._busy[0][1] < cutoff:
            self._busy.popleft()

    def _deliver(self, live: LiveRequest, t: float) -> None:
        if live.generated >= live.output_tokens:
            return  # a preempted request recomputing: its tokens were already sent
        live.generated += 1
        if live.first_token_s is None:
            live.first_token_s = t
            self.metrics.first_token(live, t - live.arrival_s)
        else:
            self.metrics.next_token(t - (live.last_token_s or t))
        live.last_token_s = t
        live.events.put_nowait((live.generated, t))

    def _publish(self) -> None:
        s = self.sched
        used = self.kv.blocks - s.free
        self.metrics.gauges(
            running=len(s.running),
            waiting=len(s.waiting) + len(self._arrivals),
            kv_usage_frac=used / self.kv.blocks if self.kv.blocks else 0.0,
        )

    def describe(self) -> dict[str, Any]:
        return {"steps": self.steps, "running": len(self.sched.running), "waiting": self.num_waiting}
