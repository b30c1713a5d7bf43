"""A stand-in for the `vllm` package (tests only): the runner of gpuaudit.recommend.vllm_inprocess
is executed against it in a subprocess, since real vLLM needs a CUDA GPU. It records what it was
given in $FAKE_VLLM_LOG and "generates" max_tokens tokens per prompt, with V1-style request metrics.
FAKE_VLLM_FAIL=1 makes LLM() raise, as vLLM does when a configuration does not fit."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

__version__ = "0.33.0-fake"


class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw


class LLM:
    def __init__(self, **kwargs):
        if os.environ.get("FAKE_VLLM_FAIL"):
            raise ValueError("No available memory for the cache blocks (fake)")
        self.kwargs = kwargs
        self.calls = []

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append([(len(p["prompt_token_ids"]), s.kw) for p, s in zip(prompts, params, strict=True)])
        with open(os.environ["FAKE_VLLM_LOG"], "w") as fh:
            json.dump({"kwargs": self.kwargs, "calls": self.calls}, fh)
        out = []
        for i, s in enumerate(params):
            n = s.kw["max_tokens"]
            t = time.monotonic()
            m = SimpleNamespace(
                first_token_latency=0.01 * (i + 1), first_token_ts=t, last_token_ts=t + 0.002 * (n - 1)
            )
            out.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(range(n)))], metrics=m))
        return out
