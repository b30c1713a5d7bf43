"""Plain per-step reference of the scheduler: walks every running request at every step, in vLLM V1's
order (running requests first, in admission order, then waiting ones). It is the yardstick for the fast
event loop in ``scheduler.py`` (tests compare them; the benchmark times both) and is not used otherwise.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuaudit.recommend.scheduler import EngineRun
from gpuaudit.recommend.steptime import StepFeatures, StepTimeModel

if TYPE_CHECKING:
    from gpuaudit.recommend.calibration import Calibration
    from gpuaudit.recommend.memory import KvCapacity
    from gpuaudit.recommend.simulator import EngineConfig, SimRequest


@dataclass
class _Req:
    arrival: float
    inl: int
    outl: int
    cached: int
    comp: int = 0
    gen: int = 0
    blk: int = 0
    decoding: bool = False
    send: float = 0.0
    first: float = -1.0


class _Ref:
    def __init__(
        self, cfg: EngineConfig, kv: KvCapacity, reqs: Sequence[SimRequest], cal: Calibration
    ) -> None:
        self.model = StepTimeModel(cfg, cal)
        self.bs, self.total = cfg.block_size, kv.blocks
        self.free = kv.blocks
        self.budget_max, self.max_seqs = cfg.resolved_max_num_batched_tokens, cfg.resolved_max_num_seqs
        self.pending = deque(
            _Req(r.arrival_s, r.input_len, r.output_len, min(r.cached_prefix_len, r.input_len - 1))
            for r in sorted(reqs, key=lambda r: r.arrival_s)
        )
        for r in self.pending:
            r.comp = r.cached
        self.running: list[_Req] = []
        self.waiting: deque[_Req] = deque()
        self.t, self.inflight, self.last_free_t = 0.0, 0, -math.inf
        self.out = EngineRun()

    def blocks(self, tokens: int) -> int:
        return -(-tokens // self.bs)

    def preempt_last(self) -> _Req:
        victim = self.running.pop()
        self.free += victim.blk
        victim.blk, victim.comp, victim.decoding = 0, victim.cached, False
        self.waiting.appendleft(victim)
        self.out.preemptions += 1
        return victim

    def schedule(self) -> list[tuple[_Req, int]]:
        budget, preempted, sched = self.budget_max, False, []
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n_new = min(r.inl + r.gen - r.comp, budget)
            need = self.blocks(r.comp + n_new) - r.blk
            victim = None
            while need > self.free and victim is not r:
                victim = self.preempt_last()
                preempted = True
            if victim is r:
                break
            self.free -= need
            r.blk += need
            sched.append((r, n_new))
            budget -= n_new
            i += 1
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            r = self.waiting[0]
            n_new = min(r.inl + r.gen - r.comp, budget)
            need = self.blocks(r.comp + n_new)
            if need > self.free:
                break
            self.waiting.popleft()
            self.running.append(r)
            self.free -= need
            r.blk = need
            sched.append((r, n_new))
            budget -= n_new
        return sched

    def features(self, sched: list[tuple[_Req, int]]) -> StepFeatures:
        d = n = sampled = 0
        attn = kv = prefix = 0.0
        for r, c in sched:
            n += c
            if r.decoding:
                d += 1
                kv += r.comp + 1
            else:
                attn += c * (r.comp + c / 2)
                prefix += r.comp
            if r.comp + c == r.inl + r.gen:
                sampled += 1
        return StepFeatures(n, sampled, len(sched), d, attn, kv, prefix)

    def release(self) -> None:
        while self.pending and self.pending[0].arrival <= self.t and self.inflight < self.cap:
            r = self.pending.popleft()
            r.send = max(r.arrival, self.last_free_t)
            if self.blocks(r.inl + r.outl - 1) > self.total:
                self.out.failed += 1
                continue
            self.inflight += 1
            self.waiting.append(r)

    def finish(self, r: _Req) -> None:
        self.running.remove(r)
        self.free += r.blk
        if self.inflight == self.cap:
            self.last_free_t = self.t
        self.inflight -= 1
        o = self.out
        o.start_times.append(r.send)
        o.ttfts.append(r.first - r.send)
        o.e2els.append(self.t - r.send)
        o.input_lens.append(r.inl)
        o.output_lens.append(r.outl)

    def step(self) -> None:
        sched = self.schedule()
        f = self.features(sched)
        dt = self.model.step(f) if sched else 0.0
        self.t += dt
        self.out.busy_s += dt
        self.out.batch_integral += dt * len(sched)
        self.out.num_steps += 1
        if f.n_decode:
            self.out.itl_values.append(dt)
            self.out.itl_weights.append(f.n_decode)
        for r, c in sched:
            r.comp += c
            if r.comp == r.inl + r.gen:
                r.gen += 1
                r.decoding = True
                if r.first < 0:
                    r.first = self.t
                if r.gen >= r.outl:
                    self.finish(r)

    def run(self, cap: int | None) -> EngineRun:
        self.cap = cap if cap is not None else len(self.pending) + 1
        while True:
            self.release()
            if not self.running and not self.waiting:
                if self.pending and self.inflight < self.cap:
                    self.t = max(self.t, self.pending[0].arrival)
                    continue
                break
            self.step()
        self.out.duration_s = self.t
        return self.out


def simulate_reference(
    cfg: EngineConfig,
    kv: KvCapacity,
    requests: Sequence[SimRequest],
    cal: Calibration,
    *,
    concurrency: int | None = None,
) -> EngineRun:
    """One replica, one step at a time, every request visited every step."""
    return _Ref(cfg, kv, requests, cal).run(concurrency)
