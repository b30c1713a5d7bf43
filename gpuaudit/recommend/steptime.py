"""Step time of one vLLM engine iteration (SIMULATOR.md §2), per GPU of a TP group.

For a step with prefill chunks c_i (starting at context s_i) and d decodes with contexts k_j,
n = Σc_i + d tokens, m scheduled sequences of which ``s`` sample a token:

    T_gemm(n) = (T_c^q + T_m^q)^(1/q)  per GEMM group (a smoothed roofline max), where
                T_c = 2·P_act·n / (TP·F·η_c·e_q)      compute, at the quantization's tensor-core peak
                T_m = W(n) / (B·η_m·e_bw)             weight streaming (MoE: experts touched by n tokens)
    T_head(s) = the same for the LM head over the s sampled rows (16-bit weights)
    T_attn_p  = Σ_i 4·L·n_h·d_head·c_i·(s_i + c_i/2) / (TP·F16·η_attn)
    T_kv      = (Σ_j k_j + Σ_i s_i) · kv_tok / (B·η_kv)
    T_comm    = 2·L·[α_ar + n·H·2·2(TP−1)/TP / (link·η_link)]             (TP > 1)
    T_step    = T_gemm + T_head + T_attn_p + T_kv + T_comm + c_layer·L + c_req·m + c_step

The decode part (everything a pure-decode step of the same d decodes would cost) is scaled by the
calibration's ``tpot_factor``; the increment that prefill tokens add is scaled by ``ttft_factor``.
The n-dependent terms are tabulated once per configuration, so a step costs a few lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gpuaudit.recommend.calibration import Calibration, Coefficients
from gpuaudit.recommend.memory import kv_bytes_per_token_per_gpu
from gpuaudit.recommend.quant import quant_profile

if TYPE_CHECKING:
    from gpuaudit.recommend.simulator import EngineConfig


@dataclass(frozen=True)
class StepFeatures:
    """Everything a step's duration depends on (so a recorded schedule can be re-timed)."""

    n_tokens: int
    n_sampled: int
    n_seqs: int
    n_decode: int
    attn_work: float  # Σ c_i·(s_i + c_i/2) over prefill chunks
    kv_tokens: float  # Σ decode contexts (tokens attended by the decodes)
    prefix_tokens: float = 0.0  # Σ s_i: cached/earlier-chunk context the prefill chunks read


def smooth_max(a: np.ndarray, b: np.ndarray, q: float) -> np.ndarray:
    big = np.maximum(np.maximum(a, b), 1e-30)
    return big * ((a / big) ** q + (b / big) ** q) ** (1.0 / q)


def gemm_time(cfg: EngineConfig, co: Coefficients, n: np.ndarray) -> np.ndarray:
    """Seconds for the transformer-block GEMMs (plus TP all-reduces) at ``n`` tokens (0 tokens: 0 s)."""
    m, gpu, tp = cfg.model, cfg.gpu, cfg.tp
    n = np.asarray(n, dtype=float)
    prof = quant_profile(cfg.quant, gpu)
    q_eff = {"16bit": 1.0, "w8a8": co.w8a8_eff, "fp4": co.fp4_eff, "weight_only": co.wo_eff}[prof.kind]
    bw_eff = co.wo_bw_eff if prof.kind == "weight_only" else 1.0
    flops_s = prof.gemm_tflops * 1e12 * co.eta_c * q_eff
    bytes_s = gpu.mem_bw_tbs * 1e12 * co.eta_m * bw_eff
    attn_p = m.layers * m.attn_params_per_layer
    if m.is_moe:
        touched = m.experts * (1.0 - (1.0 - m.active_experts / m.experts) ** n)
        mlp_w = m.layers * m.expert_params * touched
        mlp_active = m.layers * m.expert_params * m.active_experts
    else:
        mlp_w = np.full_like(n, float(m.layers * m.expert_params))
        mlp_active = m.layers * m.expert_params
    t_c = 2.0 * (attn_p + mlp_active) * n / (tp * flops_s)
    t_m = (attn_p + mlp_w) * prof.weight_bytes / (tp * bytes_s)
    t = smooth_max(t_c, t_m, co.knee)
    if tp > 1 and gpu.link_gbs:
        link = gpu.link_gbs * 1e9 * co.eta_link
        t = t + 2 * m.layers * (co.alpha_ar_s + n * m.hidden * 2.0 * 2.0 * (tp - 1) / tp / link)
    return np.where(n > 0, t, 0.0)


def head_time(cfg: EngineConfig, co: Coefficients, s: np.ndarray) -> np.ndarray:
    """Seconds for the LM head (16-bit) over ``s`` sampled rows."""
    m, gpu, tp = cfg.model, cfg.gpu, cfg.tp
    s = np.asarray(s, dtype=float)
    params = m.vocab * m.hidden
    t_c = 2.0 * params * s / (tp * gpu.bf16_tflops * 1e12 * co.eta_c)
    t_m = np.full_like(s, params * 2.0 / (tp * gpu.mem_bw_tbs * 1e12 * co.eta_m))
    return np.where(s > 0, smooth_max(t_c, t_m, co.knee), 0.0)


def fixed_step_s(cfg: EngineConfig, co: Coefficients) -> float:
    return co.c_layer_s * cfg.model.layers + co.c_step_s


def kv_read_s_per_token(cfg: EngineConfig, co: Coefficients) -> float:
    return kv_bytes_per_token_per_gpu(cfg) / (cfg.gpu.mem_bw_tbs * 1e12 * co.eta_kv)


def attn_s_per_work(cfg: EngineConfig, co: Coefficients) -> float:
    m = cfg.model
    return 4.0 * m.layers * m.heads * m.head_dim / (cfg.tp * cfg.gpu.bf16_tflops * 1e12 * co.eta_attn)


def retime(records: np.ndarray, cfg: EngineConfig, cal: Calibration) -> np.ndarray:
    """Durations of recorded schedule records under ``cal``.

    A record row is (k, n_tokens, sampled, seqs, decodes, attn_work, kv0, prefix_tokens).

    Same arithmetic as ``StepTimeModel`` (a run of k pure-decode steps sums a + b·i in closed form); used to
    re-time a duration-independent schedule (closed loop, all arrivals at t=0) without re-simulating.
    """
    co = cal.coefficients(cfg.gpu)
    k, n, s, m, d, attn, kv0, prefix = (records[:, i] for i in range(8))
    g_n, g_d = gemm_time(cfg, co, n), gemm_time(cfg, co, d)
    h_s, h_d = head_time(cfg, co, s), head_time(cfg, co, d)
    x_kv = kv_read_s_per_token(cfg, co)
    dec = g_d + h_d + co.c_req_s * d + fixed_step_s(cfg, co)
    pre = g_n - g_d + h_s - h_d + co.c_req_s * (m - d) + attn_s_per_work(cfg, co) * attn + x_kv * prefix
    run_kv = k * kv0 + d * k * (k - 1) / 2
    return cal.tpot_factor * (k * dec + x_kv * run_kv) + cal.ttft_factor * pre


class StepTimeModel:
    """Step durations for one engine configuration under one calibration."""

    def __init__(self, cfg: EngineConfig, cal: Calibration) -> None:
        co = cal.coefficients(cfg.gpu)
        self.coefficients = co
        self.f_dec = cal.tpot_factor
        self.f_pre = cal.ttft_factor
        n_max = max(cfg.resolved_max_num_batched_tokens, cfg.resolved_max_num_seqs) + 1
        s_max = cfg.resolved_max_num_seqs + 1
        gemm = gemm_time(cfg, co, np.arange(n_max + 1))
        head = head_time(cfg, co, np.arange(s_max + 1))
        fixed = fixed_step_s(cfg, co)
        self.gemm: list[float] = gemm.tolist()
        self.head: list[float] = head.tolist()
        self.fixed = fixed
        self.c_req = co.c_req_s
        # decode-only step (d decodes, no context term): scaled by the TPOT factor
        d = np.arange(s_max + 1)
        dec = (gemm[np.minimum(d, n_max)] + head[d] + co.c_req_s * d + fixed) * self.f_dec
        dec[0] = fixed * self.f_dec
        self.dec: list[float] = dec.tolist()
        self.x_kv = kv_read_s_per_token(cfg, co)
        self.x_attn = attn_s_per_work(cfg, co)
        self.n_max = n_max

    def decode_step(self, d: int, kv_tokens: float) -> float:
        """Seconds for a pure-decode step: d decodes attending ``kv_tokens`` context tokens in total."""
        return self.dec[d] + self.x_kv * kv_tokens * self.f_dec

    def step(self, f: StepFeatures) -> float:
        """Seconds for a general step (prefill chunks and decodes)."""
        d = f.n_decode
        base = self.dec[d]
        extra = (
            self.gemm[f.n_tokens]
            - self.gemm[d]
            + self.head[f.n_sampled]
            - self.head[d]
            + self.c_req * (f.n_seqs - d)
            + self.x_attn * f.attn_work
            + self.x_kv * f.prefix_tokens
        )
        return base + self.f_pre * extra + self.x_kv * f.kv_tokens * self.f_dec
