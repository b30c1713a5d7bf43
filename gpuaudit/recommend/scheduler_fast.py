"""The scheduler's event loop with its common paths inlined (see ``scheduler.py`` for the rules).

``_Engine.run`` in ``scheduler.py`` is the same loop written method by method; this version keeps the
state in local variables and inlines pure-decode runs, admissions and completions, which makes it
several times faster. Whenever a step needs a preemption (or schedule records are requested) it writes
its state back and calls the engine's methods. Tests compare it with ``_Engine.run`` and with the
per-step reference (``reference.py``).
"""

from __future__ import annotations

import heapq
import math

from gpuaudit.recommend.scheduler import DEC, DONE, FAILED, PRE, EngineRun, _Engine, steps_until


def fast_loop(e: _Engine) -> EngineRun:
    """``_Engine.run`` with pure-decode runs and preemption-free steps inlined on local variables.

    Rare paths (preemption, block shortage, several partial prefills) fall back to the methods after
    writing the local state back to the engine. Tests check it against ``run`` and the reference.
    """
    inl, outl, comp, gen, blk, g0s, ver, phase = e.inl, e.outl, e.comp, e.gen, e.blk, e.g0, e.ver, e.phase
    arr0, send, first, cnt, cnt2, heap = e.arr0, e.send, e.first, e.cnt, e.cnt2, e.heap
    running, pre, waiting, out = e.running, e.pre, e.waiting, e.out
    m = e.model
    dec, gemm, head, f_pre, c_req, x_attn, x_kv = m.dec, m.gemm, m.head, m.f_pre, m.c_req, m.x_attn, m.x_kv
    xkvf = x_kv * m.f_dec
    bs, bmax, max_seqs, cap, npend, total = e.bs, e.budget, e.max_seqs, e.cap, len(e.arr0), e.total_blocks
    n_warm = e.n_warmup
    abort_wait = e.abort_wait_s if e.abort_wait_s is not None else math.inf
    itl_v, itl_w = out.itl_values, out.itl_weights
    starts, ttfts, e2els, ilens, olens = (
        out.start_times,
        out.ttfts,
        out.e2els,
        out.input_lens,
        out.output_lens,
    )
    recs = out.records
    heappush, heappop = heapq.heappush, heapq.heappop
    t, G, free, d, sum_g0, inflight, pi, last_free_t = 0.0, 0, e.free, 0, 0, 0, 0, -math.inf
    busy = bint = 0.0
    nsteps = 0

    def sync() -> None:
        e.t, e.G, e.free, e.d, e.sum_g0, e.inflight, e.pi, e.last_free_t = (
            t,
            G,
            free,
            d,
            sum_g0,
            inflight,
            pi,
            last_free_t,
        )
        out.busy_s, out.batch_integral, out.num_steps = busy, bint, nsteps

    while True:
        if pi < npend and arr0[pi] <= t and inflight < cap:
            if recs is not None:
                sync()
                e.release()
                inflight, pi = e.inflight, e.pi
            else:
                while pi < npend and inflight < cap and arr0[pi] <= t:
                    rid = pi
                    pi += 1
                    a0 = arr0[rid]
                    send[rid] = a0 if a0 >= last_free_t else last_free_t
                    if (inl[rid] + outl[rid] - 2) // bs + 1 > total:
                        phase[rid] = FAILED
                        out.failed += 1
                        continue
                    inflight += 1
                    waiting.append(rid)
        if not running and not waiting:
            if pi < npend and inflight < cap:
                if arr0[pi] > t:
                    t = arr0[pi]
                continue
            break
        if waiting and t - send[waiting[0]] > abort_wait:
            out.saturated = True  # the queue only grows: latency is unbounded, stop here
            break
        nrun = len(running)
        if d and not pre:
            adm = False
            if waiting and nrun < max_seqs:
                rid = waiting[0]
                c0 = comp[rid]
                c = inl[rid] + gen[rid] - c0
                if c > bmax - d:
                    c = bmax - d
                adm = c > 0 and (c0 + c - 1) // bs + 1 <= free
            if not adm:
                top = heap[0]
                while top[2] != ver[top[1]] or phase[top[1]] != DEC:
                    heappop(heap)
                    top = heap[0]
                k = top[0] - G + 1
                kv0 = d * (G + 1) - sum_g0
                a = dec[d] + xkvf * kv0
                b = xkvf * d
                if not waiting and pi < npend and inflight < cap:
                    delta = arr0[pi] - t
                    if delta <= a:
                        k = 1
                    elif k > 1:
                        k = min(k, steps_until(delta, a, b))
                j = G % bs
                used = (k // bs) * d + sum(cnt2[j : j + k % bs])
                if used > free:
                    sync()
                    k = e.run_length()
                    used = e.blocks_for(k) if k else 0
                if k:
                    dt = k * a + b * k * (k - 1) / 2
                    if waiting and k > 1 and pi < npend and inflight < cap:
                        sync()
                        e.release(t + (k - 1) * a + b * (k - 1) * (k - 2) / 2)
                        inflight, pi = e.inflight, e.pi
                    free -= used
                    t += dt
                    G += k
                    busy += dt
                    bint += dt * d
                    nsteps += k
                    if recs is not None:
                        recs.append((k, d, d, d, d, 0.0, kv0, 0.0))
                    itl_v.append(a + b * (k - 1) / 2)
                    itl_w.append(k * d)
                    last = G - 1
                    while heap and heap[0][0] <= last:
                        _, rid, v = heappop(heap)
                        if v != ver[rid] or phase[rid] != DEC:
                            continue
                        g0 = g0s[rid]
                        free += (G - g0 - 1) // bs + 1
                        d -= 1
                        sum_g0 -= g0
                        r = g0 % bs
                        cnt[r] -= 1
                        cnt2[r] -= 1
                        cnt2[r + bs] -= 1
                        gen[rid] = outl[rid]
                        phase[rid] = DONE
                        del running[rid]
                        if inflight == cap:
                            last_free_t = t
                        inflight -= 1
                        if rid < n_warm:
                            continue
                        s0 = send[rid]
                        starts.append(s0)
                        ttfts.append(first[rid] - s0)
                        e2els.append(t - s0)
                        ilens.append(inl[rid])
                        olens.append(outl[rid])
                        if recs is not None and out.request_records is not None:
                            out.request_records.append((e.rec_send[rid], e.rec_first[rid], len(recs) - 1))
                    continue
        # a general step: inline when it needs no preemption and has at most one running partial prefill
        nb = cnt[G % bs] if d else 0
        simple = nb <= free and len(pre) <= 1 and recs is None
        if simple and pre:
            rid = pre[0]
            c0 = comp[rid]
            c = inl[rid] + gen[rid] - c0
            if c > bmax - d:
                c = bmax - d
            simple = c <= 0 or (c0 + c - 1) // bs + 1 - blk[rid] <= free - nb
        if not simple:
            sync()
            e.general_step()
            t, G, free, d, sum_g0, inflight, pi, last_free_t = (
                e.t,
                e.G,
                e.free,
                e.d,
                e.sum_g0,
                e.inflight,
                e.pi,
                e.last_free_t,
            )
            busy, bint, nsteps = out.busy_s, out.batch_integral, out.num_steps
            continue
        free -= nb
        budget = bmax - d
        p = 0
        attn = prefix = 0.0
        chunks = []
        nsamp = 0
        if pre:
            rid = pre[0]
            c0 = comp[rid]
            c = inl[rid] + gen[rid] - c0
            if c > budget:
                c = budget
            if c > 0:
                need = (c0 + c - 1) // bs + 1 - blk[rid]
                free -= need
                blk[rid] += need
                chunks.append((rid, c, c0))
                budget -= c
        while waiting and budget > 0 and len(running) < max_seqs:
            rid = waiting[0]
            c0 = comp[rid]
            c = inl[rid] + gen[rid] - c0
            if c > budget:
                c = budget
            need = (c0 + c - 1) // bs + 1
            if need > free:
                break
            waiting.popleft()
            running[rid] = None
            pre.append(rid)
            phase[rid] = PRE
            free -= need
            blk[rid] = need
            chunks.append((rid, c, c0))
            budget -= c
        for _, c, c0 in chunks:
            p += c
            attn += c * (c0 + c / 2)
            prefix += c0
        kv_dec = d * (G + 1) - sum_g0
        nseq = d + len(chunks)
        done = [rid for rid, c, c0 in chunks if c0 + c == inl[rid] + gen[rid]]
        nsamp = d + len(done)
        if nseq:
            dt = (
                dec[d]
                + f_pre
                * (
                    gemm[d + p]
                    - gemm[d]
                    + head[nsamp]
                    - head[d]
                    + c_req * (nseq - d)
                    + x_attn * attn
                    + x_kv * prefix
                )
                + xkvf * kv_dec
            )
        else:
            dt = 0.0
        t += dt
        G += 1
        busy += dt
        bint += dt * nseq
        nsteps += 1
        if d:
            itl_v.append(dt)
            itl_w.append(d)
        for rid, c, _ in chunks:
            comp[rid] += c
        for rid in done:
            gen[rid] += 1
            if first[rid] < 0:
                first[rid] = t
            pre.remove(rid)
            if gen[rid] >= outl[rid]:
                free += blk[rid]
                blk[rid] = 0
                phase[rid] = DONE
                del running[rid]
                if inflight == cap:
                    last_free_t = t
                inflight -= 1
                if rid < n_warm:
                    continue
                s0 = send[rid]
                starts.append(s0)
                ttfts.append(first[rid] - s0)
                e2els.append(t - s0)
                ilens.append(inl[rid])
                olens.append(outl[rid])
            else:
                g0 = G - comp[rid]
                g0s[rid] = g0
                phase[rid] = DEC
                d += 1
                sum_g0 += g0
                r = g0 % bs
                cnt[r] += 1
                cnt2[r] += 1
                cnt2[r + bs] += 1
                heappush(heap, (G + outl[rid] - gen[rid] - 1, rid, ver[rid]))
        last = G - 1
        while heap and heap[0][0] <= last:
            _, rid, v = heappop(heap)
            if v != ver[rid] or phase[rid] != DEC:
                continue
            g0 = g0s[rid]
            free += (G - g0 - 1) // bs + 1
            d -= 1
            sum_g0 -= g0
            r = g0 % bs
            cnt[r] -= 1
            cnt2[r] -= 1
            cnt2[r + bs] -= 1
            gen[rid] = outl[rid]
            phase[rid] = DONE
            del running[rid]
            if inflight == cap:
                last_free_t = t
            inflight -= 1
            if rid < n_warm:
                continue
            s0 = send[rid]
            starts.append(s0)
            ttfts.append(first[rid] - s0)
            e2els.append(t - s0)
            ilens.append(inl[rid])
            olens.append(outl[rid])
    sync()
    out.duration_s = t
    return out
