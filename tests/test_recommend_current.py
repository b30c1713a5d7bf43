"""Current-configuration inference from the engine and gpu tables, flag overrides, and the errors
that name the flag to pass."""

from __future__ import annotations

import pytest

from gpuaudit.errors import ConfigError
from gpuaudit.recommend.current import Overrides, infer_current, pick_model
from gpuaudit.recommend.workload import read_engine_frame
from gpuaudit.store import read_table
from tests.test_recommend_data import H100, RECORDED, T0, Interval, engine_rows, gpu_rows, write_dataset

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def _tables(ds):
    return read_engine_frame(ds), read_table(ds, "gpu").to_pandas()


def test_recorded_dataset():
    eng, gpus = _tables(RECORDED)
    cur = infer_current(eng, gpus, Overrides(), model_name=LLAMA)
    assert (cur.gpu.name, cur.num_gpus, cur.tp, cur.replicas) == ("H100-SXM", 1, 1, 1)
    assert (cur.quant, cur.kv_dtype, cur.max_num_seqs) == ("bf16", "auto", None)
    assert cur.engine_config().resolved_max_num_seqs == 1024  # vLLM's default on an H100
    assert cur.observed_kv_tokens == 425824 and cur.gpu_memory_utilization == 0.92
    assert cur.model.id == "meta-llama/Llama-3.1-8B"
    assert "gpu table" in cur.sources["gpu"] and "hold memory" in cur.sources["num_gpus"]


def test_idle_gpu_on_the_host_is_not_counted():
    eng, gpus = _tables(RECORDED)
    cur = infer_current(eng, gpus, Overrides(), model_name="Qwen/Qwen2.5-7B-Instruct")
    assert cur.num_gpus == 1  # host-b has 2 H100s; one holds no memory
    assert "1 of 2" in cur.sources["num_gpus"]


def test_flags_override():
    eng, gpus = _tables(RECORDED)
    ov = Overrides(gpu="A100-80GB", num_gpus=2, tp=2, quant="fp8", kv_dtype="fp8", max_num_seqs=64)
    cur = infer_current(eng, gpus, ov, model_name=LLAMA)
    assert (cur.gpu.name, cur.num_gpus, cur.tp, cur.replicas) == ("A100-SXM-80GB", 2, 2, 1)
    assert (cur.quant, cur.kv_dtype, cur.max_num_seqs) == ("fp8", "fp8", 64)
    assert cur.sources["gpu"] == "--gpu" and cur.sources["tp"] == "--tp"


def _ds(tmp_path, *, model=LLAMA, gpus=None, engines=("0",), cache=None):
    rows = []
    for e in engines:
        rows += engine_rows([Interval(reasons={"stop": 10})] * 2, model=model, engine=e, cache_config=cache)
    tables = {"engine": rows}
    if gpus is not None:
        tables["gpu"] = gpu_rows(T0, 3, 60.0, gpus)
    return _tables(write_dataset(tmp_path / "ds", {"h": tables}))


def test_quant_from_checkpoint_and_kv_from_cache_config(tmp_path):
    eng, gpus = _ds(
        tmp_path,
        model="nvidia/Llama-3.1-8B-Instruct-FP8",
        gpus=[("G0", H100, 70.0)],
        cache={"cache_dtype": "fp8_e4m3", "num_gpu_blocks": "1000", "block_size": "16"},
    )
    cur = infer_current(eng, gpus, Overrides(), model_name="nvidia/Llama-3.1-8B-Instruct-FP8")
    assert (cur.quant, cur.kv_dtype, cur.observed_kv_tokens) == ("fp8", "fp8", 16000)
    assert cur.sources["quant"] == "checkpoint id"


def test_data_parallel_engines_share_the_gpus(tmp_path):
    gpus = [(f"G{i}", H100, 70.0) for i in range(4)]
    eng, g = _ds(tmp_path, gpus=gpus, engines=("0", "1"))
    cur = infer_current(eng, g, Overrides(), model_name=LLAMA)
    assert (cur.num_gpus, cur.replicas, cur.tp) == (4, 2, 2)


def test_no_gpu_rows_names_the_flags(tmp_path):
    eng, g = _ds(tmp_path, gpus=None)
    with pytest.raises(ConfigError) as err:
        infer_current(eng, g, Overrides(), model_name=LLAMA)
    assert "--gpu" in err.value.hint and "--num-gpus" in err.value.hint
    cur = infer_current(eng, g, Overrides(gpu="L40S", num_gpus=1), model_name=LLAMA)
    assert cur.gpu.name == "L40S"


def test_several_gpu_types(tmp_path):
    eng, g = _ds(tmp_path, gpus=[("G0", H100, 70.0), ("G1", "NVIDIA L40S", 40.0)])
    with pytest.raises(ConfigError, match="several GPU types") as err:
        infer_current(eng, g, Overrides(), model_name=LLAMA)
    assert "--gpu" in err.value.hint


def test_gpus_do_not_split_over_engines(tmp_path):
    eng, g = _ds(tmp_path, gpus=[(f"G{i}", H100, 70.0) for i in range(3)], engines=("0", "1"))
    with pytest.raises(ConfigError, match="do not split evenly") as err:
        infer_current(eng, g, Overrides(), model_name=LLAMA)
    assert "--tp" in err.value.hint


def test_unknown_architecture_names_model_flags(tmp_path):
    eng, g = _ds(tmp_path, model="my-private-llm", gpus=[("G0", H100, 70.0)])
    with pytest.raises(ConfigError, match="cannot tell the architecture") as err:
        infer_current(eng, g, Overrides(), model_name="my-private-llm")
    assert "--model" in err.value.hint and "--model-config" in err.value.hint
    cur = infer_current(eng, g, Overrides(model="Qwen/Qwen2.5-7B"), model_name="my-private-llm")
    assert cur.model.id == "Qwen/Qwen2.5-7B"


def test_pick_model():
    assert pick_model(["a"], None) == ("a", "a")
    assert pick_model(["a", "b"], "b") == ("b", "b")
    assert pick_model(["alias"], "meta-llama/Llama-3.1-8B") == ("alias", "meta-llama/Llama-3.1-8B")
    with pytest.raises(ConfigError, match="2 models") as err:
        pick_model(["a", "b"], None)
    assert "--model" in err.value.hint


def test_host_shared_by_two_models_needs_num_gpus(tmp_path):
    rows = engine_rows([Interval(reasons={"stop": 1})] * 2, model=LLAMA)
    rows += engine_rows(
        [Interval(reasons={"stop": 1})] * 2, model="Qwen/Qwen2.5-7B", endpoint="http://a:8001/m"
    )
    ds = write_dataset(
        tmp_path / "ds", {"h": {"engine": rows, "gpu": gpu_rows(T0, 2, 60, [("G0", H100, 70.0)])}}
    )
    eng, g = _tables(ds)
    with pytest.raises(ConfigError, match="several models") as err:
        infer_current(eng, g, Overrides(), model_name=LLAMA)
    assert "--num-gpus" in err.value.hint
