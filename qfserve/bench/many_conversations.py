"""The many-conversations scenario's workload and play: more conversations than the server has
slots, played round-robin, so that a conversation's next turn finds its slot taken by others.

Only a prefix cache that keeps more histories than slots (a RAM or disk tier) lets a returning
turn skip prefilling its whole history again; this measures how close such a turn comes to the
time to first token of a fresh conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from qfserve.bench.client import Sampling, Target, stream_chat
from qfserve.bench.runner import client_for
from qfserve.bench.workload import SPEC_TOTAL_CHARS, Conversation

# What a turn is to the server.
FRESH = "fresh"  # a conversation's first turn: nothing of it can be cached
RETURNING = "returning"  # a later turn; its slot has served other conversations since
AFTER_RESTART = "after_restart"  # the first turn after the server restarted
KINDS = (FRESH, RETURNING, AFTER_RESTART)


def many(base: Sequence[Conversation], count: int, turns: int) -> list[Conversation]:
    """`count` conversations of `turns` turns, cycling through `base` (those with enough turns),
    each opened by its own number: no two then share more than the chat template's opening,
    as two users' conversations would not."""
    usable = [c for c in base if len(c.turns) >= turns]
    if not usable:
        raise ValueError(f"no conversation of the workload has {turns} turns")
    found: list[Conversation] = []
    for index in range(count):
        source = usable[index % len(usable)]
        number = index + 1
        opening = f"[{number}] {source.turns[0]}"
        found.append(
            Conversation(
                id=f"{source.id}-{number}",
                lang=source.lang,
                turns=(opening, *source.turns[1:turns]),
                history_chars=source.history_chars,
            )
        )
    return found


def schedule(count: int, first_turn: int, last_turn: int) -> list[tuple[int, int]]:
    """(conversation index, turn number) in the order they are asked: turn `first_turn` of every
    conversation, then the next turn of every conversation, and so on. With more conversations
    than slots, between two turns of one conversation every slot has served another."""
    return [(c, t) for t in range(first_turn, last_turn + 1) for c in range(count)]


def kind_of(turn: int, first_after_restart: int | None) -> str:
    if turn == 1:
        return FRESH
    return AFTER_RESTART if turn == first_after_restart else RETURNING


def chars(messages: Iterable[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def fit_history(
    messages: list[dict[str, str]], limit: int = SPEC_TOTAL_CHARS
) -> list[dict[str, str]]:
    """The messages within `limit` characters, as Qianfan keeps them: the oldest rounds (a
    question and its answer) dropped first, the last question always kept."""
    kept = list(messages)
    while chars(kept) > limit and len(kept) > 2:
        kept = kept[2:]
    return kept


def kept_answer(text: str, budget: int) -> str:
    """What the history keeps of an answer: at most `budget` characters (the conversation's share
    of the limit), never empty (the spec refuses an empty message)."""
    return text[:budget] or "OK."


@dataclass(slots=True)
class _Conversing:
    conversation: Conversation
    history: list[dict[str, str]] = field(default_factory=list)
    answered: int = 0  # turns done, successfully or not
    failed: bool = False


class Conversations:
    """The state of a set of conversations across the phases of a run (a restart between two
    phases keeps the histories, as a client would)."""

    def __init__(self, conversations: Sequence[Conversation], limit: int = SPEC_TOTAL_CHARS):
        self._states = [_Conversing(c) for c in conversations]
        self._limit = limit

    def __len__(self) -> int:
        return len(self._states)

    async def play(
        self,
        target: Target,
        *,
        first_turn: int,
        last_turn: int,
        parallel: int,
        sampling: Sampling,
        first_after_restart: int | None = None,
        on_turn: Callable[[], None] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> list[dict[str, Any]]:
        """Turns `first_turn` to `last_turn` of every conversation, in `schedule` order, by
        `parallel` clients side by side (one per slot of the server). Each turn streams the
        answer that goes into the history; its time to first token is the turn's figure.
        `client`: one to use instead of a pool of `parallel` connections of its own."""
        queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        for item in schedule(len(self._states), first_turn, last_turn):
            queue.put_nowait(item)
        records: list[dict[str, Any]] = []
        turn_ended = asyncio.Condition()
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(client_for(parallel))
            http = client

            async def worker() -> None:
                while not queue.empty():
                    index, turn = queue.get_nowait()
                    state = self._states[index]
                    # Its previous turn may still be answering when there are few conversations.
                    async with turn_ended:
                        while state.answered < turn - 1:
                            await turn_ended.wait()
                    if not state.failed:
                        records.append(
                            await self._turn(http, target, state, turn, sampling,
                                             kind_of(turn, first_after_restart))
                        )  # fmt: skip
                    async with turn_ended:
                        state.answered = turn
                        turn_ended.notify_all()
                    if on_turn is not None:
                        on_turn()

            await asyncio.gather(*(worker() for _ in range(max(1, parallel))))
        return records

    async def _turn(
        self,
        client: httpx.AsyncClient,
        target: Target,
        state: _Conversing,
        turn: int,
        sampling: Sampling,
        kind: str,
    ) -> dict[str, Any]:
        conversation = state.conversation
        question = conversation.turns[turn - 1]
        limit = min(self._limit, conversation.history_chars)
        messages = fit_history([*state.history, {"role": "user", "content": question}], limit)
        record = await stream_chat(client, target, messages, sampling)
        if record.error is not None:
            state.failed = True
        answer = kept_answer(record.text, conversation.answer_budget())
        state.history = [*messages, {"role": "assistant", "content": answer}]
        return {
            "conversation": conversation.id,
            "lang": conversation.lang,
            "turn": turn,
            "kind": kind,
            "history_chars": chars(messages),
            "messages": len(messages),
            "prompt_tokens": record.prompt_tokens,
            "cached_tokens": record.cached_tokens,
            "output_tokens": record.output_tokens,
            "ttft_s": record.ttft_s,
            "e2e_s": record.e2e_s,
            "error": record.error,
        }


def answer_sampling(sampling: Sampling, answer_tokens: int) -> Sampling:
    return dataclasses.replace(sampling, max_tokens=answer_tokens)
