"""Prompts of a requested token length without a tokenizer, and the token estimate serve-sim uses.

A prompt is a sequence of common English words, each written with one leading space (`` the``,
`` of`` …). Every word of ``WORDS`` is **one token** in the Llama-3 tokenizer (128k BPE vocabulary,
shared by Llama-3, 3.1, 3.2 and 3.3): the tokenizer's pre-tokenizer splits text into `` word``
pieces, so words never merge with their neighbours, and each piece is a single vocabulary entry.
This was checked against the Llama-3.2 ``tokenizer.json`` (its merges) for all 256 words;
``tests/data/replay/llama3_word_tokens.json`` records the token id of each word. A prompt of
``n`` words is therefore ``n`` tokens, plus the ``<|begin_of_text|>`` token that vLLM's
completions endpoint adds: ``build_prompt(input_len)`` writes ``input_len - 1`` words, so the
server sees exactly ``input_len`` tokens (±0 for Llama-3; other BPE vocabularies with these
common words as single tokens, e.g. Qwen2.5 and Mistral's Tekken, behave the same; this has not
been checked for them).

Shared prefixes: a trace line's ``hash_ids`` name 16-token blocks (vllm bench's default
``--timed-trace-chunk-hash-size``); block ``h`` is always the same 16 words, so requests that
share leading hash ids share a textual prefix and hit the server's prefix cache.

``estimate_tokens(text)`` counts words and punctuation marks (long words count one token per 6
characters); it is exact on prompts built here and is what serve-sim uses for prompt length.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

# 256 words, each one token (with its leading space) in the Llama-3 tokenizer; at most 6 letters.
WORDS: tuple[str, ...] = tuple(
    """the of and to in is that for it with as was on be at by this have from or one had not but
    what all were when we there can an your which their said if do will each about how up out them
    then she many some so these would other into has more her two like him see time could no make
    than first been its who now people my made over did down only way find use may water long
    little very after words called just where most know get back much go good new write our me man
    too any day same right look think also around came come work three word must does part even
    place well such here take why help put years away again off went old number great tell men say
    small every found still name should home big give air line set own under read last never us
    left end along while might next sound below saw both few those always show large often asked
    house world going want school until form food keep feet land side boy once animal life enough
    took four head above kind began almost live page got earth need far hand high year mother light
    father let night being study second soon story since white ever paper hard near better best
    across during today sure knew try told young sun thing whole hear heard change answer room sea
    top turned learn point city play toward five money seen car body upon""".split()  # noqa: SIM905
)
BLOCK_TOKENS = 16  # tokens per trace hash id (vllm bench --timed-trace-chunk-hash-size default)
BOS_TOKENS = 1  # tokens the server's tokenizer adds to a completions prompt (Llama-3: <|begin_of_text|>)
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_LONG_WORD_CHARS = 6


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` as the Llama-3 tokenizer would count them for text built by this module
    (exact), and a rough estimate for other English text: one token per word of up to 6 characters
    (one per 6 characters beyond), one per punctuation mark. Special tokens are not included."""
    n = 0
    for piece in _TOKEN_RE.findall(text):
        n += 1 if len(piece) <= _LONG_WORD_CHARS else math.ceil(len(piece) / _LONG_WORD_CHARS)
    return n


def _block_words(hash_id: int) -> list[str]:
    rng = random.Random(f"block:{hash_id}")
    return [rng.choice(WORDS) for _ in range(BLOCK_TOKENS)]


def build_prompt(
    input_len: int, *, hash_ids: Sequence[int] = (), salt: int | str = 0, bos_tokens: int = BOS_TOKENS
) -> str:
    """A prompt of ``input_len`` tokens (``bos_tokens`` of which the server adds). Leading words come
    from ``hash_ids`` blocks (shared prefixes); the rest are drawn from a generator seeded by ``salt``,
    so distinct salts give distinct prompts."""
    n_words = max(1, input_len - bos_tokens)
    words: list[str] = []
    for h in hash_ids:
        if len(words) >= n_words:
            break
        words.extend(_block_words(int(h)))
    del words[n_words:]
    rng = random.Random(f"prompt:{salt}")
    words.extend(rng.choice(WORDS) for _ in range(n_words - len(words)))
    return "".join(" " + w for w in words)


def output_words(n: int, *, salt: int | str = 0) -> list[str]:
    """``n`` generated 'tokens' (words with a leading space), deterministic in ``salt``."""
    rng = random.Random(f"out:{salt}")
    return [" " + rng.choice(WORDS) for _ in range(n)]


def prefix_block_keys(text: str) -> list[tuple[str, ...]]:
    """The full ``BLOCK_TOKENS``-word blocks of a prompt, in order (serve-sim's prefix-cache keys)."""
    words = text.split()
    return [tuple(words[i : i + BLOCK_TOKENS]) for i in range(0, len(words) - BLOCK_TOKENS + 1, BLOCK_TOKENS)]
