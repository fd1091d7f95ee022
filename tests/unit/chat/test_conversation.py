from __future__ import annotations

import pytest

from qfserve.chat.conversation import Message, check_messages, drop_oldest_round, forget_to_fit
from qfserve.errors import RuleViolation


def turns(*contents: str) -> list[Message]:
    return [Message("user" if i % 2 == 0 else "assistant", c) for i, c in enumerate(contents)]


def test_valid_conversation_passes() -> None:
    check_messages(turns("a", "b", "c"), max_question_chars=2000)


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([], "must not be empty"),
        (turns("a", "b"), "odd number"),
        ([Message("user", "a"), Message("user", "b"), Message("user", "c")], "must be assistant"),
        ([Message("system", "a")], "must be user"),
        (turns("a", "", "c"), "must not be empty"),
        (turns("x" * 11), "the max length of current question is 10"),
    ],
)
def test_rules(messages: list[Message], reason: str) -> None:
    with pytest.raises(RuleViolation, match=reason) as raised:
        check_messages(messages, max_question_chars=10)
    assert raised.value.code == 336003


def test_forgetting_drops_whole_rounds_oldest_first() -> None:
    messages = turns("a" * 5, "b" * 5, "c" * 3, "d" * 3, "e")
    assert forget_to_fit(messages, max_total_chars=100) == messages
    assert forget_to_fit(messages, max_total_chars=10) == messages[2:]
    assert forget_to_fit(messages, max_total_chars=2) == messages[4:]


def test_the_question_is_never_forgotten() -> None:
    assert forget_to_fit(turns("long question"), max_total_chars=1) == turns("long question")
    assert drop_oldest_round(turns("q")) is None
    assert drop_oldest_round(turns("a", "b", "c")) == turns("c")
