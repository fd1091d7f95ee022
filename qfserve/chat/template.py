"""From messages to the prompt text the model reads.

The model's own chat template (the GGUF's `tokenizer.chat_template`, Jinja2) is used when it has
one. Meta's Llama-2 chat format (`[INST] <<SYS>>`) is written out here instead of through Jinja for
Llama-2 chat models, which usually ship no template, and for models with none at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qfserve.chat.conversation import Message
from qfserve.engines.base import EngineInfo
from qfserve.errors import InternalError

LLAMA2 = "llama-2"
_LLAMA2_NAME = re.compile(r"llama[-_ ]?2.*chat", re.IGNORECASE)


class ChatTemplate:
    def __init__(self, info: EngineInfo, override: str = "") -> None:
        self._bos, self._eos = info.bos_token, info.eos_token
        source = override or info.chat_template or ""
        is_llama2 = override == LLAMA2 or (
            not override and (not source or bool(_LLAMA2_NAME.search(info.model_name)))
        )
        self.kind = LLAMA2 if is_llama2 else "jinja"
        self._jinja = None
        if not is_llama2:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._jinja = env.from_string(source)

    def render(self, messages: Sequence[Message], system: str | None) -> str:
        if self._jinja is None:
            return self._render_llama2(messages, system)
        turns: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in messages]
        if system:
            turns.insert(0, {"role": "system", "content": system})
        try:
            return self._jinja.render(
                messages=turns,
                bos_token=self._bos,
                eos_token=self._eos,
                add_generation_prompt=True,
            )
        except TemplateError as exc:
            raise InternalError("the endpoint's chat template failed") from exc

    def _render_llama2(self, messages: Sequence[Message], system: str | None) -> str:
        # Meta's format: each round is `<s>[INST] question [/INST] answer </s>`; the system prompt
        # goes inside the first [INST] block.
        parts: list[str] = []
        for index in range(0, len(messages), 2):
            question = messages[index].content.strip()
            if index == 0 and system:
                question = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{question}"
            part = f"{self._bos}[INST] {question} [/INST]"
            if index + 1 < len(messages):
                part += f" {messages[index + 1].content.strip()} {self._eos}"
            parts.append(part)
        return "".join(parts)


def _raise(message: str) -> None:
    raise TemplateError(message)
