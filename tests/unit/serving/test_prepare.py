"""Preparing a chat: the message count is bounded first, and long conversations are fitted off the
event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from qfserve.chat import formats
from qfserve.chat.conversation import Message
from qfserve.chat.formats import JsonFormat
from qfserve.chat.params import RequestedSampling
from qfserve.config import EndpointSettings, Settings
from qfserve.engines.base import Delta, EngineInfo, EngineStats, GenerationRequest
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import RuleViolation
from qfserve.metrics import Metrics
from qfserve.serving import chat as chat_serving
from qfserve.serving.chat import ChatServing

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class CharEngine:
    """A token per character; remembers which threads tokenized."""

    def __init__(self) -> None:
        self.info = EngineInfo("chat", "m.gguf", 4096, CHATML, "<s>", "</s>", "test")
        self.ready = True
        self.tokenizing_threads: set[int] = set()

    async def start(self) -> None:
        pass

    async def drain(self, grace_seconds: float) -> None:
        pass

    async def close(self) -> None:
        pass

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        self.tokenizing_threads.add(threading.get_ident())
        return [ord(c) for c in text]

    def stats(self) -> EngineStats:
        raise NotImplementedError

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        raise NotImplementedError
        yield


def serving(engine: CharEngine, **endpoint: int) -> ChatServing:
    settings = Settings(endpoints=[EndpointSettings.model_validate({"name": "chat", **endpoint})])
    registry = EngineRegistry({"chat": engine})
    return ChatServing(settings, registry, Metrics(registry), None)


def conversation(count: int) -> list[Message]:
    return [Message("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(count)]


def test_a_long_conversation_is_fitted_off_the_event_loop() -> None:
    engine = CharEngine()
    chat = serving(engine, max_total_chars=10**6)

    async def prepare() -> tuple[int, int]:
        prepared = await chat.prepare("r", "chat", conversation(999), None, RequestedSampling())
        return threading.get_ident(), len(prepared.generation.messages)

    loop_thread, kept = asyncio.run(prepare())
    assert 1 < kept < 999  # the context made it forget rounds
    assert engine.tokenizing_threads and loop_thread not in engine.tokenizing_threads


def test_a_short_conversation_is_fitted_on_the_event_loop() -> None:
    engine = CharEngine()
    chat = serving(engine)

    async def prepare() -> int:
        await chat.prepare("r", "chat", conversation(3), "Be brief.", RequestedSampling())
        return threading.get_ident()

    assert engine.tokenizing_threads == {asyncio.run(prepare())}


def test_too_many_messages_are_refused_before_any_other_work() -> None:
    engine = CharEngine()
    chat = serving(engine, max_messages=1000)
    # An even count and empty contents too: the count is the error the client gets.
    messages = [Message("user", "")] * 10_002
    with pytest.raises(RuleViolation, match="the number of messages must not exceed 1000") as error:
        asyncio.run(chat.prepare("r", "chat", messages, None, RequestedSampling()))
    assert error.value.code == 336003
    assert not engine.tokenizing_threads
    asyncio.run(chat.prepare("r", "chat", conversation(999), None, RequestedSampling()))


def test_the_default_bound_is_a_thousand_messages() -> None:
    assert EndpointSettings().max_messages == 1000


@pytest.mark.parametrize(("fields", "off_loop"), [(3, False), (50, True)])
def test_a_large_schema_is_converted_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, fields: int, off_loop: bool
) -> None:
    converting: set[int] = set()

    def recording(text: str, strict: bool) -> str:
        converting.add(threading.get_ident())
        return formats.grammar_for(text, strict)

    monkeypatch.setattr(chat_serving, "grammar_for", recording)
    properties = {f"field_{i}": {"type": "string"} for i in range(fields)}
    schema = JsonFormat({"type": "object", "properties": properties})

    async def prepare() -> tuple[int, str | None]:
        chat = serving(CharEngine(), max_system_chars=10**6)
        prepared = await chat.prepare(
            "r", "chat", conversation(1), None, RequestedSampling(), json_format=schema
        )
        return threading.get_ident(), prepared.generation.grammar

    loop_thread, grammar = asyncio.run(prepare())
    assert grammar == formats.json_grammar(schema)
    assert (loop_thread not in converting) == off_loop and len(converting) == 1
