"""Iteration-level emulation of the vLLM V1 scheduler (chunked prefill on, FCFS, recompute preemption).

Each step: every running decode takes one token of the ``max_num_batched_tokens`` budget first; the
rest goes to prefill chunks, first to the (at most one) partially prefilled running request, then to
waiting requests in FCFS order while ``max_num_seqs`` and the free KV blocks allow. A request's blocks
grow on demand (``ceil(tokens / block_size)``); when a running request cannot get a block, the most
recently admitted request is preempted (blocks freed, re-queued at the head, its prompt *and* the tokens
it had generated recomputed later), and no waiting request is admitted in that step.

``run_engine`` is the fast implementation: decodes are kept as aggregates (count, Σ context, a histogram
of context mod block_size, a heap of finishing steps), and a run of identical pure-decode steps between
events (arrival, completion, block exhaustion) is advanced in one go, its step times summed in closed
form (they grow linearly with the context). ``simulate_reference`` walks every request at every step;
tests check that both give the same results and ``benchmarks/bench_simulator.py`` times both.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpuaudit.recommend.steptime import StepFeatures, StepTimeModel

if TYPE_CHECKING:
    from gpuaudit.recommend.calibration import Calibration
    from gpuaudit.recommend.memory import KvCapacity
    from gpuaudit.recommend.simulator import EngineConfig, SimRequest

WAIT, PRE, DEC, DONE, FAILED = 0, 1, 2, 3, 4


@dataclass
class EngineRun:
    """Raw outcome of one replica (lists indexed by completed request)."""

    start_times: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    e2els: list[float] = field(default_factory=list)
    input_lens: list[int] = field(default_factory=list)
    output_lens: list[int] = field(default_factory=list)
    itl_values: list[float] = field(default_factory=list)
    itl_weights: list[int] = field(default_factory=list)
    failed: int = 0
    duration_s: float = 0.0
    measure_start_s: float = 0.0  # when the first measured (non-warm-up) request was sent
    saturated: bool = False  # stopped early: a request waited longer than ``abort_wait_s``
    busy_s: float = 0.0
    batch_integral: float = 0.0  # Σ step_time × scheduled sequences
    preemptions: int = 0
    num_steps: int = 0
    records: list[tuple[Any, ...]] | None = None  # schedule records (see ``Recorder``), when asked for
    request_records: list[tuple[int, int, int]] | None = None  # per request: (send, first-token, finish)


def steps_until(delta: float, a: float, b: float) -> int:
    """Smallest k ≥ 1 with k·a + b·k(k−1)/2 ≥ delta (step n of a run lasts a + b·n)."""
    if delta <= a:
        return 1
    if b <= 1e-300:
        k = math.ceil(delta / a)
    else:
        h = a - b / 2
        k = math.ceil((-h + math.sqrt(h * h + 2 * b * delta)) / b)
    k = max(1, k)
    while k * a + b * k * (k - 1) / 2 < delta:
        k += 1
    while k > 1 and (k - 1) * a + b * (k - 1) * (k - 2) / 2 >= delta:
        k -= 1
    return k


class _Engine:
    """State of one replica; ``run`` is the event loop."""

    def __init__(
        self,
        cfg: EngineConfig,
        kv: KvCapacity,
        requests: Sequence[SimRequest],
        cal: Calibration,
        concurrency: int | None,
        record: bool,
        n_warmup: int = 0,
        abort_wait_s: float | None = None,
    ) -> None:
        self.n_warmup = n_warmup
        self.abort_wait_s = abort_wait_s
        self.model = StepTimeModel(cfg, cal)
        self.bs = cfg.block_size
        self.total_blocks = kv.blocks
        self.free = kv.blocks
        self.budget = cfg.resolved_max_num_batched_tokens
        self.max_seqs = cfg.resolved_max_num_seqs
        reqs = sorted(requests, key=lambda r: r.arrival_s)
        self.arr0 = [r.arrival_s for r in reqs]
        self.inl = [r.input_len for r in reqs]
        self.outl = [r.output_len for r in reqs]
        n = len(reqs)
        self.cached = [min(r.cached_prefix_len, r.input_len - 1) for r in reqs]
        self.comp = list(self.cached)
        self.gen = [0] * n
        self.blk = [0] * n
        self.g0 = [0] * n
        self.ver = [0] * n
        self.phase = [WAIT] * n
        self.send = [0.0] * n
        self.first = [-1.0] * n
        self.cap = concurrency if concurrency is not None else n + 1
        self.inflight = 0
        self.last_free_t = -math.inf
        self.pi = 0  # next request to release
        self.t = 0.0
        self.G = 0  # step counter
        self.running: dict[int, None] = {}
        self.pre: list[int] = []
        self.waiting: deque[int] = deque()
        self.d = 0
        self.sum_g0 = 0
        self.cnt = [0] * self.bs
        self.cnt2 = [0] * (2 * self.bs)  # cnt twice over, so a window of it is one slice
        self.heap: list[tuple[int, int, int]] = []
        self.out = EngineRun(records=[] if record else None, request_records=[] if record else None)
        self.rec_send = [-1] * n
        self.rec_first = [-1] * n

    # -- arrivals and completions ------------------------------------------------------------------
    def release(self, until: float | None = None) -> None:
        """Send the requests that have arrived by ``until`` (default: now) and have a client slot."""
        t, arr0 = (self.t if until is None else until), self.arr0
        while self.pi < len(arr0) and self.inflight < self.cap and arr0[self.pi] <= t:
            rid = self.pi
            self.pi += 1
            self.send[rid] = max(arr0[rid], self.last_free_t)
            if self.out.records is not None:
                self.rec_send[rid] = len(self.out.records) - 1 if self.send[rid] > 0 else -1
            need = -(-(self.inl[rid] + self.outl[rid] - 1) // self.bs)
            if need > self.total_blocks:  # can never fit: vLLM rejects it (longer than the KV cache)
                self.phase[rid] = FAILED
                self.out.failed += 1
                continue
            self.inflight += 1
            self.waiting.append(rid)

    def finish(self, rid: int) -> None:
        self.phase[rid] = DONE
        self.running.pop(rid, None)
        if self.inflight == self.cap:
            self.last_free_t = self.t
        self.inflight -= 1
        if rid < self.n_warmup:
            return
        o = self.out
        o.start_times.append(self.send[rid])
        o.ttfts.append(self.first[rid] - self.send[rid])
        o.e2els.append(self.t - self.send[rid])
        o.input_lens.append(self.inl[rid])
        o.output_lens.append(self.outl[rid])
        if o.request_records is not None and o.records is not None:
            o.request_records.append((self.rec_send[rid], self.rec_first[rid], len(o.records) - 1))

    def hist(self, g0: int, delta: int) -> None:
        r = g0 % self.bs
        self.cnt[r] += delta
        self.cnt2[r] += delta
        self.cnt2[r + self.bs] += delta

    def finish_decodes(self) -> None:
        """Retire decodes whose last token came out of the step that just ended (G − 1)."""
        heap, last = self.heap, self.G - 1
        while heap and heap[0][0] <= last:
            _, rid, v = heapq.heappop(heap)
            if v != self.ver[rid] or self.phase[rid] != DEC:
                continue
            g0 = self.g0[rid]
            self.free += -(-(self.G - g0) // self.bs)
            self.d -= 1
            self.sum_g0 -= g0
            self.hist(g0, -1)
            self.gen[rid] = self.outl[rid]
            self.finish(rid)

    def to_decode(self, rid: int) -> None:
        """A request whose prefill just completed (and sampled a token) joins the decodes at step G."""
        g0 = self.G - self.comp[rid]
        self.g0[rid] = g0
        self.phase[rid] = DEC
        self.d += 1
        self.sum_g0 += g0
        self.hist(g0, 1)
        heapq.heappush(self.heap, (self.G + self.outl[rid] - self.gen[rid] - 1, rid, self.ver[rid]))

    def preempt(self, rid: int) -> None:
        """Recompute preemption: free the blocks, forget the KV, re-queue at the head."""
        self.running.pop(rid)
        if self.phase[rid] == DEC:
            g0 = self.g0[rid]
            self.free += -(-(self.G - g0) // self.bs)
            self.d -= 1
            self.sum_g0 -= g0
            self.hist(g0, -1)
            self.ver[rid] += 1
            self.gen[rid] = self.G - g0 - self.inl[rid] + 1  # num_computed = prompt + generated − 1
        else:
            self.free += self.blk[rid]
            self.pre.remove(rid)
        self.blk[rid] = 0
        self.comp[rid] = self.cached[rid]
        self.phase[rid] = WAIT
        self.waiting.appendleft(rid)
        self.out.preemptions += 1

    # -- one general step ----------------------------------------------------------------------------
    def alloc_decodes_exact(self) -> bool:
        """Decode block allocation when blocks run short; True if it preempted.

        vLLM walks the running requests in order and, whenever one cannot get a block, preempts from the
        tail (possibly itself). The requests preempted are therefore the shortest tail whose removal
        leaves enough free blocks for the rest: pop from the tail until the remaining decodes' needs fit.
        """
        bs, G = self.bs, self.G
        need = self.cnt[G % bs]
        preempted = False
        while need > self.free:
            victim = next(reversed(self.running))
            if self.phase[victim] == DEC and (G - self.g0[victim]) % bs == 0:
                need -= 1
            self.preempt(victim)
            preempted = True
        self.free -= need
        return preempted

    def schedule_prefills(self, budget: int, preempted: bool) -> list[tuple[int, int, int]]:
        """Prefill chunks (rid, chunk, start) for the running partial prefills, then waiting requests."""
        bs, chunks = self.bs, []
        for rid in list(self.pre):
            if budget <= 0 or rid not in self.running:
                break
            c0, n_tok = self.comp[rid], self.inl[rid] + self.gen[rid]
            c = min(n_tok - c0, budget)
            need = -(-(c0 + c) // bs) - self.blk[rid]
            while need > self.free and rid in self.running:
                self.preempt(next(reversed(self.running)))
                preempted = True
            if rid not in self.running:
                break
            self.free -= need
            self.blk[rid] += need
            chunks.append((rid, c, c0))
            budget -= c
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            rid = self.waiting[0]
            c0, n_tok = self.comp[rid], self.inl[rid] + self.gen[rid]
            c = min(n_tok - c0, budget)
            need = -(-(c0 + c) // bs)
            if need > self.free:
                break
            self.waiting.popleft()
            self.running[rid] = None
            self.pre.append(rid)
            self.phase[rid] = PRE
            self.free -= need
            self.blk[rid] = need
            chunks.append((rid, c, c0))
            budget -= c
        return chunks

    def general_step(self) -> None:
        """One step with prefill work or a block shortage: the plain, method-by-method path."""
        preempted = False
        if self.d:
            nb = self.cnt[self.G % self.bs]
            if nb > self.free:
                preempted = self.alloc_decodes_exact()
            else:
                self.free -= nb
        d = self.d
        chunks = self.schedule_prefills(self.budget - d, preempted)
        kv_dec = d * (self.G + 1) - self.sum_g0
        p, attn, prefix = 0, 0.0, 0.0
        done = []
        for rid, c, c0 in chunks:
            p += c
            attn += c * (c0 + c / 2)
            prefix += c0
            if c0 + c == self.inl[rid] + self.gen[rid]:
                done.append(rid)
        feats = StepFeatures(d + p, d + len(done), d + len(chunks), d, attn, kv_dec, prefix)
        dt = self.model.step(feats) if feats.n_seqs else 0.0
        self.advance(dt, 1, (d + p, d + len(done), d + len(chunks), d, attn, kv_dec, prefix))
        if d:
            self.out.itl_values.append(dt)
            self.out.itl_weights.append(d)
        for rid, c, _ in chunks:
            self.comp[rid] += c
        for rid in done:
            self.sampled_after_prefill(rid)
        self.finish_decodes()

    def sampled_after_prefill(self, rid: int) -> None:
        self.gen[rid] += 1
        if self.first[rid] < 0:
            self.first[rid] = self.t
            if self.out.records is not None:
                self.rec_first[rid] = len(self.out.records) - 1
        self.pre.remove(rid)
        if self.gen[rid] >= self.outl[rid]:
            self.free += self.blk[rid]
            self.blk[rid] = 0
            self.finish(rid)
        else:
            self.to_decode(rid)

    def advance(self, dt: float, k: int, rec: tuple[Any, ...]) -> None:
        """Account a step (k = 1) or a run of k decode steps.

        ``rec`` = (n_tokens, sampled, seqs, decodes, attn_work, kv0, prefix_tokens).
        """
        self.t += dt
        self.G += k
        self.out.busy_s += dt
        self.out.num_steps += k
        self.out.batch_integral += dt * rec[2]
        if self.out.records is not None:
            self.out.records.append((k, *rec))

    def run(self) -> EngineRun:
        """The event loop, readable form (``fast_loop`` is the same loop with the common paths inlined)."""
        while True:
            self.release()
            if not self.running and not self.waiting:
                if self.pi < len(self.arr0) and self.inflight < self.cap:
                    self.t = max(self.t, self.arr0[self.pi])
                    continue
                break
            if not self.pre and self.d and not self.can_admit():
                k = self.run_length()
                if k:
                    self.decode_run(k)
                    continue
            self.general_step()
        self.out.duration_s = self.t
        return self.out

    # -- runs of identical decode steps -----------------------------------------------------------------
    def can_admit(self) -> bool:
        if not self.waiting or len(self.running) >= self.max_seqs:
            return False
        rid = self.waiting[0]
        c0 = self.comp[rid]
        c = min(self.inl[rid] + self.gen[rid] - c0, self.budget - self.d)
        return c > 0 and -(-(c0 + c) // self.bs) <= self.free

    def blocks_for(self, k: int) -> int:
        """KV blocks the decodes allocate over the next k steps (from step G)."""
        bs, j = self.bs, self.G % self.bs
        r = k % bs
        return (k // bs) * self.d + sum(self.cnt2[j : j + r])

    def run_length(self) -> int:
        """Steps until the next event (completion, admissible arrival, block exhaustion); 0 = none fits."""
        heap, ver, phase = self.heap, self.ver, self.phase
        while heap[0][2] != ver[heap[0][1]] or phase[heap[0][1]] != DEC:
            heapq.heappop(heap)
        k = heap[0][0] - self.G + 1
        if not self.waiting and self.pi < len(self.arr0) and self.inflight < self.cap:
            a, b = self.run_coeffs()
            k = min(k, steps_until(self.arr0[self.pi] - self.t, a, b))
        if self.blocks_for(k) <= self.free:
            return k
        bs, d, cnt, G, free = self.bs, self.d, self.cnt, self.G, self.free
        cycles = free // d
        k, used = cycles * bs, cycles * d
        for i in range(bs):
            used += cnt[(G + i) % bs]
            if used > free:
                break
            k += 1
        return k

    def run_coeffs(self) -> tuple[float, float]:
        """Step n of the current decode run lasts a + b·n."""
        kv0 = self.d * (self.G + 1) - self.sum_g0
        return self.model.decode_step(self.d, kv0), self.model.x_kv * self.model.f_dec * self.d

    def decode_run(self, k: int) -> None:
        d = self.d
        kv0 = d * (self.G + 1) - self.sum_g0
        a, b = self.run_coeffs()
        t0 = self.t
        self.free -= self.blocks_for(k)
        self.advance(k * a + b * k * (k - 1) / 2, k, (d, d, d, d, 0.0, kv0, 0.0))
        if self.waiting and k > 1:  # arrivals queued behind a blocked head: sent at the step boundaries
            self.release(t0 + (k - 1) * a + b * (k - 1) * (k - 2) / 2)
        self.out.itl_values.append(a + b * (k - 1) / 2)
        self.out.itl_weights.append(k * d)
        self.finish_decodes()


def run_engine(
    cfg: EngineConfig,
    kv: KvCapacity,
    requests: Sequence[SimRequest],
    cal: Calibration,
    *,
    concurrency: int | None = None,
    record: bool = False,
    n_warmup: int = 0,
    abort_wait_s: float | None = None,
) -> EngineRun:
    """Simulate one replica (fast implementation).

    The first ``n_warmup`` requests (in arrival order, ties kept in order) run but are left out of the
    results; ``EngineRun.measure_start_s`` is when the first measured request was sent. With
    ``abort_wait_s``, the run stops (``saturated``) once a queued request has waited that long.
    """
    from gpuaudit.recommend.scheduler_fast import fast_loop

    run = fast_loop(_Engine(cfg, kv, requests, cal, concurrency, record, n_warmup, abort_wait_s))
    run.measure_start_s = min(run.start_times, default=0.0)
    return run
