"""gpuaudit: measure GPU waste in LLM inference, price it, and recommend cheaper vLLM configurations.

Importing this package is cheap: it needs no GPU, no driver and no vllm, and it does
not import pandas, pyarrow or pynvml. Those load inside the commands that use them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
