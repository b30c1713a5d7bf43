"""GPU and model catalogs: hardware peaks and model architectures the simulator needs.

Both ship as package data (``gpuaudit/data/gpus.yaml``, ``models.yaml``). Users add or override
entries with a YAML file of the same shape (``load_catalog_overrides``). Any Hugging Face
``config.json`` also resolves to a ``ModelSpec`` (``model_from_hf_config``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from gpuaudit.errors import ConfigError

QUANTS = ("bf16", "fp16", "fp8", "int8", "int4-awq", "int4-gptq", "fp4")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model. Peaks are dense tensor-core figures; ``None`` = no tensor-core support."""

    name: str
    memory_gb: float
    mem_bw_tbs: float
    bf16_tflops: float
    fp8_tflops: float | None
    int8_tops: float | None
    fp4_tflops: float | None
    tdp_w: float
    link_gbs: float | None  # per-direction bandwidth a TP all-reduce sees (NVLink or PCIe)
    interconnect: str
    arch: str  # turing | ampere | ada | hopper | blackwell | cdna3
    aliases: tuple[str, ...] = ()
    has_bf16: bool = True
    memory_total_mib: float | None = None  # NVML memory.total, the base of gpu_memory_utilization
    source: str = ""

    @property
    def memory_bytes(self) -> float:
        """Device memory as CUDA sees it (NVML ``memory.total``); ``memory_gb`` × 1e9 if unknown."""
        if self.memory_total_mib:
            return self.memory_total_mib * 2**20
        return self.memory_gb * 1e9


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's architecture (from its HF ``config.json``)."""

    id: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    experts: int = 0
    active_experts: int = 0
    moe_intermediate: int = 0  # per-expert FFN size; 0 = same as ``intermediate``
    tie_embeddings: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def attn_params_per_layer(self) -> int:
        q_o = 2 * self.hidden * self.heads * self.head_dim
        return q_o + 2 * self.hidden * self.kv_heads * self.head_dim

    @property
    def expert_params(self) -> int:
        """Parameters of one FFN (one expert for MoE models)."""
        inter = self.moe_intermediate or self.intermediate
        return 3 * self.hidden * inter

    @property
    def mlp_params_per_layer(self) -> int:
        return self.expert_params * self.experts if self.experts else self.expert_params

    @property
    def linear_params(self) -> int:
        """All transformer-block GEMM weights (what quantization shrinks); excludes embeddings."""
        router = self.hidden * self.experts
        return self.layers * (self.attn_params_per_layer + self.mlp_params_per_layer + router)

    @property
    def embed_params(self) -> int:
        """Input embedding plus LM head (once when tied); kept in 16-bit by quantized checkpoints."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    @property
    def params_total(self) -> int:
        return self.linear_params + self.embed_params

    @property
    def params_active(self) -> int:
        """GEMM parameters one token multiplies through (active experts only, plus the LM head)."""
        mlp = self.expert_params * (self.active_experts if self.experts else 1)
        return self.layers * (self.attn_params_per_layer + mlp) + self.vocab * self.hidden

    @property
    def is_moe(self) -> bool:
        return self.experts > 1


def _norm(name: str) -> str:
    s = name.strip().lower()
    s = re.sub(r"^(nvidia|amd)\s+", "", s)
    return re.sub(r"[\s_]+", "-", s)


def _gpu_from_dict(d: dict[str, Any], *, where: str) -> GpuSpec:
    known = {f.name for f in fields(GpuSpec)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown GPU field(s) {sorted(unknown)}", hint=f"known fields: {sorted(known)}"
        )
    try:
        return GpuSpec(**{**d, "aliases": tuple(d.get("aliases") or ())})
    except TypeError as exc:
        raise ConfigError(f"{where}: bad GPU entry {d.get('name')!r}: {exc}") from exc


def _model_from_dict(d: dict[str, Any], *, where: str) -> ModelSpec:
    known = {f.name for f in fields(ModelSpec)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown model field(s) {sorted(unknown)}", hint=f"known: {sorted(known)}"
        )
    try:
        return ModelSpec(**{**d, "aliases": tuple(d.get("aliases") or ())})
    except TypeError as exc:
        raise ConfigError(f"{where}: bad model entry {d.get('id')!r}: {exc}") from exc


def _read_yaml(text: str, *, where: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with `gpus:` and/or `models:`")
    return data


@cache
def _builtin() -> tuple[tuple[GpuSpec, ...], tuple[ModelSpec, ...]]:
    pkg = resources.files("gpuaudit.data")
    g = _read_yaml(pkg.joinpath("gpus.yaml").read_text(), where="gpus.yaml")
    m = _read_yaml(pkg.joinpath("models.yaml").read_text(), where="models.yaml")
    gpus = tuple(_gpu_from_dict(d, where="gpus.yaml") for d in g["gpus"])
    models = tuple(_model_from_dict(d, where="models.yaml") for d in m["models"])
    return gpus, models


_EXTRA_GPUS: dict[str, GpuSpec] = {}
_EXTRA_MODELS: dict[str, ModelSpec] = {}


def load_catalog_overrides(path: Path) -> None:
    """Add or replace catalog entries from a user YAML (``gpus:`` / ``models:`` lists, same fields)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read catalog file: {exc.strerror}") from exc
    data = _read_yaml(text, where=str(path))
    for d in data.get("gpus") or []:
        spec = _gpu_from_dict(d, where=str(path))
        _EXTRA_GPUS[spec.name] = spec
    for d in data.get("models") or []:
        spec_m = _model_from_dict(d, where=str(path))
        _EXTRA_MODELS[spec_m.id] = spec_m


def list_gpus() -> list[GpuSpec]:
    out = {g.name: g for g in _builtin()[0]}
    out.update(_EXTRA_GPUS)
    return list(out.values())


def list_models() -> list[ModelSpec]:
    out = {m.id: m for m in _builtin()[1]}
    out.update(_EXTRA_MODELS)
    return list(out.values())


def resolve_gpu(name: str) -> GpuSpec:
    """``H100-SXM``, ``h100``, ``NVIDIA H100 80GB HBM3`` (NVML) … → ``GpuSpec``; ConfigError otherwise."""
    key = _norm(name)
    gpus = list_gpus()
    for g in reversed(gpus):  # user overrides win
        if key == _norm(g.name) or key in {_norm(a) for a in g.aliases}:
            return g
    # MIG or odd NVML suffixes: "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    for g in gpus:
        for cand in (g.name, *g.aliases):
            if len(_norm(cand)) > 4 and key.startswith(_norm(cand) + "-"):
                return g
    raise ConfigError(
        f"unknown GPU {name!r}",
        hint=f"known GPUs: {', '.join(g.name for g in gpus)} (or add one with a YAML file)",
    )


_QUANT_SUFFIXES: tuple[tuple[str, str], ...] = (
    (r"[-_.]?(fp8|fp8[-_]dynamic|fp8[-_]static|fp8[-_]block)$", "fp8"),
    (r"[-_.](nvfp4|fp4|mxfp4)$", "fp4"),
    (r"[-_.](awq)([-_]int4)?$", "int4-awq"),
    (r"[-_.](gptq)([-_]int4)?$", "int4-gptq"),
    (r"[-_.](w4a16|quantized\.w4a16|int4)$", "int4-gptq"),
    (r"[-_.](w8a8|quantized\.w8a8|int8|gptq[-_]int8)$", "int8"),
    (r"[-_.](w8a16|quantized\.w8a16)$", "int8"),
)


def _split_quant(model_id: str) -> tuple[str, str | None]:
    """Strip quantization suffixes (``-FP8``, ``-AWQ``, ``-GPTQ-Int4``, ``-quantized.w4a16``…)."""
    name, quant = model_id.strip(), None
    changed = True
    while changed:
        changed = False
        for pattern, q in _QUANT_SUFFIXES:
            m = re.search(pattern, name, flags=re.IGNORECASE)
            if m and m.start() > 0:
                name, quant, changed = name[: m.start()], quant or q, True
                break
        for junk in ("-dynamic", "-static", "-kv", "-quantized"):
            if name.lower().endswith(junk):
                name, changed = name[: -len(junk)], True
    return name, quant


def _lookup_model(name: str) -> ModelSpec | None:
    base = name.split("/")[-1].lower()
    full = name.lower()
    for m in reversed(list_models()):
        ids = (m.id, *m.aliases)
        if full in {i.lower() for i in ids} or base in {i.split("/")[-1].lower() for i in ids}:
            return m
    return None


def resolve_model(model_id: str, *, config_path: Path | None = None) -> tuple[ModelSpec, str | None]:
    """Model id (HF id, optionally a quantized checkpoint) → (architecture, implied quantization or None).

    ``config_path`` (a HF ``config.json``) takes precedence over the catalog.
    """
    if config_path is not None:
        return model_from_hf_config(config_path, model_id=model_id)
    base, quant = _split_quant(model_id)
    spec = _lookup_model(model_id) or _lookup_model(base)
    if spec is None:
        names = ", ".join(m.id for m in list_models())
        raise ConfigError(
            f"unknown model {model_id!r}",
            hint=f"pass --model-config path/config.json (any Hugging Face config), or one of: {names}",
        )
    return spec, quant


def _quant_from_hf(qc: dict[str, Any]) -> str | None:
    method = str(qc.get("quant_method", "")).lower()
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8"
    if method in ("awq", "awq_marlin"):
        return "int4-awq"
    if method in ("gptq", "gptq_marlin"):
        return "int4-gptq" if int(qc.get("bits", 4)) == 4 else "int8"
    if method in ("modelopt", "modelopt_fp4", "mxfp4"):
        algo = str(qc.get("quant_algo", "")).lower()
        return "fp4" if "fp4" in algo or method != "modelopt" else "fp8"
    if method == "compressed-tensors":
        for group in (qc.get("config_groups") or {}).values():
            w = group.get("weights") or {}
            bits, typ = int(w.get("num_bits", 16)), str(w.get("type", "int"))
            if bits == 4:
                return "fp4" if typ == "float" else "int4-gptq"
            if bits == 8:
                return "fp8" if typ == "float" else "int8"
    return None


def model_from_hf_config(path: Path, *, model_id: str | None = None) -> tuple[ModelSpec, str | None]:
    """Read a Hugging Face ``config.json`` into a ``ModelSpec`` (plus its ``quantization_config``)."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read a Hugging Face config.json: {exc}") from exc
    text = cfg.get("text_config") or cfg
    try:
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        experts = int(text.get("num_local_experts") or text.get("num_experts") or 0)
        spec = ModelSpec(
            id=model_id or str(cfg.get("_name_or_path") or Path(path).parent.name),
            layers=int(text["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            intermediate=int(text.get("intermediate_size") or 4 * hidden),
            vocab=int(text["vocab_size"]),
            experts=experts,
            active_experts=int(text.get("num_experts_per_tok") or (2 if experts else 0)),
            moe_intermediate=int(text.get("moe_intermediate_size") or 0),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: missing or bad field {exc} in config.json") from exc
    qc = cfg.get("quantization_config")
    quant = _quant_from_hf(qc) if isinstance(qc, dict) else None
    return spec, quant if quant is not None else (_split_quant(model_id)[1] if model_id else None)
