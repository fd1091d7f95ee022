"""The conversation rules of the chat API: message order, lengths, and forgetting old rounds.

Pure functions over plain data: no I/O, no HTTP. Errors carry the page's own wording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qfserve.errors import RuleViolation


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


def check_messages(messages: Sequence[Message], *, max_question_chars: int) -> None:
    """Raise 336003 with the reason when the messages break a rule of the page."""
    if not messages:
        raise RuleViolation("the messages must not be empty")
    if len(messages) % 2 == 0:
        raise RuleViolation("the length of messages must be an odd number")
    for index, message in enumerate(messages):
        if index % 2 == 0 and message.role != "user":
            raise RuleViolation("the role of message with even index in the messages must be user")
        if index % 2 == 1 and message.role != "assistant":
            raise RuleViolation(
                "the role of message with odd index in the messages must be assistant"
            )
        if not message.content.strip():
            raise RuleViolation(f"the content of message {index} must not be empty")
    if len(messages[-1].content) > max_question_chars:
        raise RuleViolation(f"the max length of current question is {max_question_chars}")


def forget_to_fit(messages: Sequence[Message], *, max_total_chars: int) -> list[Message]:
    """Drop the oldest rounds (a question and its answer) until all contents fit the limit.

    The current question always stays: `check_messages` has bounded its length already.
    """
    kept = list(messages)
    while len(kept) > 1 and sum(len(m.content) for m in kept) > max_total_chars:
        kept = kept[2:]
    return kept


def drop_oldest_round(messages: Sequence[Message]) -> list[Message] | None:
    """The messages without their oldest round, or None when only the question is left."""
    return list(messages[2:]) if len(messages) > 1 else None
