"""From messages to the prompt text the model reads.

The model's own chat template (the GGUF's `tokenizer.chat_template`, Jinja2) is used when it has
one. Meta's Llama-2 chat format (`[INST] <<SYS>>`) is written out here instead of through Jinja for
Llama-2 chat models, which usually ship no template, and for models with none at all.

Tools and tool messages go through the template when it renders them (it shows a tool offered to
it, an assistant's call and a tool's result: tried once on made-up ones); otherwise the tools are
offered in the system prompt and the calls and results written as text (`qfserve.chat.tools`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qfserve.chat.conversation import Message, uses_tools
from qfserve.chat.formats import ToolCall, ToolSpec
from qfserve.chat.tools import ToolUse, arguments_value, as_plain_conversation, with_tools_prompt
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
        self.renders_tools = self._renders_tools()

    def render(
        self, messages: Sequence[Message], system: str | None, tools: ToolUse | None = None
    ) -> str:
        """The prompt; `tools` offered to the model (None: none are)."""
        if not self.renders_tools and (tools is not None or uses_tools(messages)):
            messages = as_plain_conversation(messages)
            system = with_tools_prompt(system, tools)
            tools = None
        if self._jinja is None:
            return self._render_llama2(messages, system)
        try:
            return self._render_jinja(messages, system, tools.tools if tools is not None else ())
        except TemplateError as exc:
            raise InternalError("the endpoint's chat template failed") from exc

    def _render_jinja(
        self, messages: Sequence[Message], system: str | None, tools: Sequence[ToolSpec]
    ) -> str:
        assert self._jinja is not None
        turns = _turns(messages)
        if system:
            turns.insert(0, {"role": "system", "content": system})
        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": dict(t.parameters) or {"type": "object"},
                    },
                }
                for t in tools
            ]
        return self._jinja.render(
            messages=turns,
            bos_token=self._bos,
            eos_token=self._eos,
            add_generation_prompt=True,
            **extra,
        )

    def _renders_tools(self) -> bool:
        """Whether the template shows an offered tool, a call and a call's result."""
        if self._jinja is None:
            return False
        tool = ToolSpec("qfserve_probe_tool", "A probe.", {"type": "object"})
        call = ToolCall("call_qfserveprobe", "qfserve_probe_call", '{"qfserve_probe_arg": 1}')
        conversation = [
            Message("user", "Hello"),
            Message("assistant", "", (call,)),
            Message("tool", "qfserve_probe_result", tool_call_id=call.id),
        ]
        try:
            offered = self._render_jinja([Message("user", "Hello")], None, [tool])
            called = self._render_jinja(conversation, None, [tool])
        except Exception:
            return False  # a template that refuses them cannot render them
        return tool.name in offered and all(
            part in called for part in ("qfserve_probe_call", "qfserve_probe_result")
        )

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


def _turns(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as chat templates read them: calls with their arguments as JSON data, as the
    templates that render them expect, and each tool result with its call's name."""
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for message in messages:
        turn: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            turn["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments_value(call.arguments)},
                }
                for call in message.tool_calls
            ]
            names.update((call.id, call.name) for call in message.tool_calls)
        if message.role == "tool":
            turn["tool_call_id"] = message.tool_call_id
            turn["name"] = names.get(message.tool_call_id or "", "")
        turns.append(turn)
    return turns
