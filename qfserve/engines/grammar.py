"""GBNF grammars compiled for one vocabulary, kept by their text, and copied per sequence.

Compiling parses the grammar (costly for a large JSON Schema's); each sequence needs a sampler of
its own, because a grammar sampler holds the parse state of the answer so far. So a grammar is
compiled once, in a worker thread before its request joins the batch, and every sequence gets a
clone (`llama_sampler_clone`: a copy of the parsed rules). The compiled ones are kept, least
recently used first out, up to `capacity`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import llama_cpp

from qfserve.errors import InvalidArgument

ROOT = b"root"


class GrammarCache:
    def __init__(self, vocab: Any, capacity: int = 64) -> None:
        self._vocab = vocab
        self._capacity = capacity
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def sampler(self, grammar: str) -> Any:
        """A fresh grammar sampler for one sequence, owned by the caller (free it, or hand it to a
        chain, which frees it). Raises InvalidArgument when llama.cpp cannot parse the grammar.
        Thread-safe; compiling reads only the vocabulary."""
        with self._lock:
            compiled = self._compiled.get(grammar)
            if compiled is not None:
                self._compiled.move_to_end(grammar)
                return llama_cpp.llama_sampler_clone(compiled)
        compiled = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), ROOT)
        if not compiled:
            raise InvalidArgument("Invalid Argument: the answer's grammar could not be parsed")
        with self._lock:
            if grammar in self._compiled:  # compiled twice at once: keep the first
                llama_cpp.llama_sampler_free(compiled)
                compiled = self._compiled[grammar]
            else:
                self._compiled[grammar] = compiled
                while len(self._compiled) > self._capacity:
                    _, oldest = self._compiled.popitem(last=False)
                    llama_cpp.llama_sampler_free(oldest)
            return llama_cpp.llama_sampler_clone(compiled)

    def close(self) -> None:
        with self._lock:
            for compiled in self._compiled.values():
                llama_cpp.llama_sampler_free(compiled)
            self._compiled.clear()
