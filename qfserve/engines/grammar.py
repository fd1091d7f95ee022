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

from qfserve.errors import EngineUnavailable, InvalidArgument

ROOT = b"root"
_UNPARSABLE = "Invalid Argument: the answer's grammar could not be parsed"


class GrammarCache:
    def __init__(self, vocab: Any, capacity: int = 64) -> None:
        self._vocab = vocab
        self._capacity = capacity
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        # Compiling reads the vocabulary, which is freed with the model after `close`.
        self._compiling = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False

    def sampler(self, grammar: str) -> Any:
        """A fresh grammar sampler for one sequence, owned by the caller (free it, or hand it to a
        `SequenceSampler`, which frees it). Raises InvalidArgument when llama.cpp cannot parse
        the grammar, EngineUnavailable once closed. Thread-safe."""
        # llama.cpp reads a C string: an empty one means no grammar at all, a NUL ends it early.
        if not grammar or "\0" in grammar:
            raise InvalidArgument(_UNPARSABLE)
        with self._lock:
            if self._closed:
                raise EngineUnavailable()
            compiled = self._compiled.get(grammar)
            if compiled is not None:
                self._compiled.move_to_end(grammar)
                return llama_cpp.llama_sampler_clone(compiled)
            self._compiling += 1
        try:
            compiled = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), ROOT)
        finally:
            with self._lock:
                self._compiling -= 1
                self._idle.notify_all()
        if not compiled:
            raise InvalidArgument(_UNPARSABLE)
        with self._lock:
            if self._closed:
                llama_cpp.llama_sampler_free(compiled)
                raise EngineUnavailable()
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
        """Free the compiled grammars once no compilation is under way; later calls to `sampler`
        raise EngineUnavailable. Idempotent."""
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: self._compiling == 0)
            for compiled in self._compiled.values():
                llama_cpp.llama_sampler_free(compiled)
            self._compiled.clear()
