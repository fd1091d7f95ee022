"""Token counts for a model that lives elsewhere: exact from a local GGUF's vocabulary, or an
estimate.

The chat layer tokenizes every prompt to check it against the context length and to report its
usage; a network round trip per prompt would be too slow, and the OpenAI API has no tokenizer
route anyway. So either the operator points the endpoint at a GGUF of the same model (only its
vocabulary is loaded: about 20 MB and a fraction of a second), or the count is estimated.
"""

from __future__ import annotations

import math
import re
from typing import Any

from qfserve.errors import EngineUnavailable

# CJK ideographs: the unified blocks, extension A and the compatibility block.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_CHAR = re.compile(f"[{_HAN}]")
# A word: a run of letters, digits or "_" that are not ideographs.
_WORD = re.compile(rf"[^\W{_HAN}]+")


def estimate_token_count(text: str) -> int:
    """Qianfan's own estimate (its API page): Chinese characters + words x 1.3, rounded up.
    Punctuation and whitespace count for nothing."""
    han = len(_HAN_CHAR.findall(text))
    words = len(_WORD.findall(text))
    return han + math.ceil(words * 1.3)


def estimate_tokens(text: str) -> list[int]:
    """As many placeholder ids (0) as the estimate: callers may only rely on the length."""
    return [0] * estimate_token_count(text)


class GgufVocab:
    """The vocabulary of a GGUF file, without its weights. Tokenizing only reads the vocabulary,
    so `tokenize` may be called from any thread."""

    def __init__(self, path: str) -> None:
        from llama_cpp import Llama

        try:
            # llama.cpp still creates a context for a vocabulary-only model: a tiny one will do,
            # and n_ctx=0 ("the model's") fails since such a model has no training context.
            self._llm: Any = Llama(
                model_path=path, vocab_only=True, n_ctx=16, n_batch=16, n_ubatch=16, verbose=False
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineUnavailable(f"could not load the tokenizer {path}") from exc
        self.metadata: dict[str, str] = dict(self._llm.metadata)
        model = self._llm._model  # token texts are only on the internal model
        self.bos_token: str = model.token_get_text(self._llm.token_bos())
        self.eos_token: str = model.token_get_text(self._llm.token_eos())

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        tokens: list[int] = self._llm.tokenize(text.encode(), add_bos=False, special=special)
        return tokens

    def close(self) -> None:
        self._llm.close()
