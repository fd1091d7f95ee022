"""A GGUF model loaded with llama.cpp's low-level API: weights, vocabulary and metadata.

Thread safety: `tokenize` may be called from any thread (llama.cpp's tokenizer only reads the
vocabulary; a lock keeps it from racing `close`). `token_piece` and `is_eog` are for the engine
thread; `close` must come after that thread has stopped.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Any

import llama_cpp

from qfserve.errors import EngineUnavailable, InternalError

logger = logging.getLogger(__name__)
_native_logger = logging.getLogger("qfserve.llama_cpp")

# ggml.h's levels: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line).
# (llama_cpp._logger's table predates this numbering, one more reason not to use its callback.)
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_last_level = logging.DEBUG


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_to_python(level: int, text: bytes, _user_data: Any) -> None:
    # Importing llama_cpp installs a callback that prints everything to stderr; route it through
    # logging instead, with llama.cpp's chatty INFO lines demoted to DEBUG.
    global _last_level
    py_level = _last_level if level == 5 else _LEVELS.get(level, logging.DEBUG)
    _last_level = py_level
    if _native_logger.isEnabledFor(py_level):
        line = text.decode("utf-8", errors="replace").rstrip("\n")
        if line:
            _native_logger.log(py_level, "%s", line)


_backend_lock = threading.Lock()
_backend_ready = False


def init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True


class LlamaModel:
    """Owns one `llama_model *` and its vocabulary. `close()` frees them; idempotent."""

    def __init__(self, path: str) -> None:
        init_backend()
        if not os.path.isfile(path):
            raise EngineUnavailable(f"model file not found: {path}")
        params = llama_cpp.llama_model_default_params()
        # As llama-cpp-python's own `Llama` loads on a CPU build (its known-good settings).
        params.n_gpu_layers = 0
        params.load_mode = 1
        model = llama_cpp.llama_model_load_from_file(path.encode("utf-8"), params)
        if not model:
            raise EngineUnavailable(f"llama.cpp could not load the model: {path}")
        self.ptr: Any = model
        self.vocab: Any = llama_cpp.llama_model_get_vocab(model)
        self.path = path
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(model)
        self.bos_id: int = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos_id: int = llama_cpp.llama_vocab_eos(self.vocab)
        self.metadata: dict[str, str] = self._read_metadata()
        self._pieces: dict[int, bytes] = {}
        self._lock = threading.Lock()

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def name(self) -> str:
        return self.metadata.get("general.name", "")

    @property
    def bos_token(self) -> str:
        return self._token_text(self.bos_id)

    @property
    def eos_token(self) -> str:
        return self._token_text(self.eos_id)

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        """Token ids of `text`. `special` parses control-token text such as `<|im_start|>`;
        `add_bos` prepends BOS if the model's tokenizer asks for one."""
        data = text.encode("utf-8")
        # A token spans at least one byte; the slack is for BOS/EOS.
        capacity = len(data) + 4
        with self._lock:
            if not self.ptr:
                raise EngineUnavailable()
            while True:
                out = (llama_cpp.llama_token * capacity)()
                n = llama_cpp.llama_tokenize(
                    self.vocab, data, len(data), out, capacity, add_bos, special
                )
                if n >= 0:
                    return out[:n]
                if -n <= capacity:
                    raise InternalError(f"llama.cpp failed to tokenize ({n})")
                capacity = -n

    def token_piece(self, token: int) -> bytes:
        """The bytes a sampled token stands for; control tokens render as nothing. Cached."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[: max(0, n)]
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        with self._lock:
            if self.ptr:
                llama_cpp.llama_model_free(self.ptr)
                self.ptr = None
                self.vocab = None

    def _token_text(self, token: int) -> str:
        if token < 0 or not self.vocab:
            return ""
        text: bytes = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace")

    def _read_metadata(self) -> dict[str, str]:
        # Scalars only: llama.cpp renders arrays (the token list) as a short placeholder.
        def read(fn: Any, i: int) -> str:
            size = 256
            while True:
                buf = ctypes.create_string_buffer(size)
                n = fn(self.ptr, i, buf, size)
                if n < size:
                    return buf.value.decode("utf-8", errors="replace") if n >= 0 else ""
                size = n + 1

        metadata: dict[str, str] = {}
        for i in range(llama_cpp.llama_model_meta_count(self.ptr)):
            key = read(llama_cpp.llama_model_meta_key_by_index, i)
            metadata[key] = read(llama_cpp.llama_model_meta_val_str_by_index, i)
        return metadata
