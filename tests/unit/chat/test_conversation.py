from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from qfserve.chat.conversation import (
    FittedPrompt,
    Message,
    Render,
    Tokenize,
    check_messages,
    fit_conversation,
)
from qfserve.chat.template import ChatTemplate
from qfserve.engines.base import EngineInfo
from qfserve.errors import InvalidMessages, RuleViolation


def turns(*contents: str) -> list[Message]:
    return [Message("user" if i % 2 == 0 else "assistant", c) for i, c in enumerate(contents)]


def check(messages: Sequence[Message], max_question_chars: int = 10, max_messages: int = 9) -> None:
    check_messages(messages, max_question_chars=max_question_chars, max_messages=max_messages)


def test_valid_conversation_passes() -> None:
    check(turns("a", "b", "c"))


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([], "must not be empty"),
        (turns("a", "b"), "odd number"),
        ([Message("user", "a"), Message("user", "b"), Message("user", "c")], "must be assistant"),
        ([Message("system", "a")], "must be user"),
        (turns("a", "", "c"), "the content of message 1 must not be empty"),
        (turns("a", " \n\t", "c"), "the content of message 1 must not be empty"),
        (turns("x" * 11), "the max length of current question is 10"),
        (turns(*"abcdefghij"), "the number of messages must not exceed 9"),
    ],
)
def test_rules(messages: list[Message], reason: str) -> None:
    with pytest.raises(RuleViolation, match=reason) as raised:
        check(messages)
    assert raised.value.code == 336003


def test_an_empty_content_is_a_fault_of_the_messages_not_of_their_length() -> None:
    with pytest.raises(InvalidMessages) as raised:
        check(turns("a", " ", "c"))
    assert raised.value.v2_code == "invalid_messages"


def test_the_message_count_is_checked_before_anything_else() -> None:
    # Every other rule is broken too: the count is what the client is told, before any pass
    # over the messages.
    messages = [Message("system", "")] * 10
    with pytest.raises(RuleViolation, match="the number of messages must not exceed 9"):
        check(messages)
    check(turns(*"abcdefghi"))  # exactly the limit


def fit_chars(messages: list[Message], max_total_chars: int) -> list[Message]:
    """The character half alone: a context too large to matter."""
    fitted = fit_conversation(
        messages,
        None,
        render=lambda kept, _system: "".join(m.content for m in kept),
        tokenize=lambda text: [0] * len(text),
        max_total_chars=max_total_chars,
        context_length=10**6,
        max_tokens=1,
    )
    return fitted.kept_messages


def test_forgetting_drops_whole_rounds_oldest_first() -> None:
    messages = turns("a" * 5, "b" * 5, "c" * 3, "d" * 3, "e")
    assert fit_chars(messages, max_total_chars=100) == messages
    assert fit_chars(messages, max_total_chars=17) == messages
    assert fit_chars(messages, max_total_chars=16) == messages[2:]
    assert fit_chars(messages, max_total_chars=7) == messages[2:]
    assert fit_chars(messages, max_total_chars=6) == messages[4:]


def test_the_question_is_never_forgotten_for_its_characters() -> None:
    assert fit_chars(turns("long question"), max_total_chars=1) == turns("long question")
    assert fit_chars(turns("a", "b", "long question"), max_total_chars=1) == turns("long question")


# --- Both halves of forgetting against the rule as it was first written ---------------------

# Tokens as a BPE tokenizer sees them, roughly: control markers whole, words in pieces of up to
# three letters, each CJK character, digit and punctuation mark alone; whitespace free.
_TOKEN = re.compile(
    r"<\|[a-z_]+\|>|\[/?INST\]|<</?SYS>>|</?s>|[A-Za-z]{1,3}|[0-9]|[\u4e00-\u9fff]|[^\sA-Za-z0-9]"
)


def fake_tokenize(text: str) -> list[int]:
    return [hash(piece) & 0xFFFF for piece in _TOKEN.findall(text)]


CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# SmolLM2's shape: a default system prompt when the request has none.
CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# An overhead that changes with the cut: every message is numbered from the first kept one, so
# the per-message estimate is off and the search must correct it.
NUMBERED = (
    "{% for message in messages %}Turn {{ loop.index * 7919 }} of {{ loop.length * 104729 }} "
    "by {{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Turn by assistant:{% endif %}"
)

# Overheads far from one per message, for the search to correct the estimate both ways: marks
# on every message that grow with the number kept (the estimate drops too many rounds), and a
# preamble that grows ever slower (it drops too few).
CROWDED = (
    "{% for message in messages %}{{ '#' * (loop.length // 4) }} {{ message['role'] }}: "
    "{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PREAMBLE = (
    "{{ '#' * ((((messages | length) * 400) ** 0.5) | int) }}\n"
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def template(source: str) -> ChatTemplate:
    info = EngineInfo("e", "m.gguf", 4096, source, "<s>", "</s>", "test")
    return ChatTemplate(info, override="llama-2" if source == "llama-2" else "")


TEMPLATES = {
    "chatml": template(CHATML),
    "chatml-default-system": template(CHATML_DEFAULT_SYSTEM),
    "llama-2": template("llama-2"),
    "numbered": template(NUMBERED),
    "crowded": template(CROWDED),
    "preamble": template(PREAMBLE),
}


def reference_fit(
    messages: Sequence[Message],
    system: str | None,
    *,
    render: Render,
    tokenize: Tokenize,
    max_total_chars: int,
    context_length: int,
    max_tokens: int,
) -> FittedPrompt:
    """The rule as first written: one round dropped at a time, re-rendered after each."""
    kept = list(messages)
    while len(kept) > 1 and sum(len(m.content) for m in kept) > max_total_chars:
        kept = kept[2:]
    while True:
        text = render(kept, system)
        tokens = tokenize(text)
        if len(tokens) + max_tokens <= context_length:
            return FittedPrompt(kept, text, tokens)
        if len(kept) == 1:
            raise RuleViolation(
                f"the prompt and max_output_tokens ({max_tokens}) exceed the model's context of "
                f"{context_length} tokens"
            )
        kept = kept[2:]


def random_text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.choice([1, 1, 2, 3, 5, 8, 20])):
        kind = rng.random()
        if kind < 0.6:
            words.append("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 11))))
        elif kind < 0.85:
            words.append("".join(rng.choices("你好世界天气怎么样谢谢", k=rng.randint(1, 6))))
        else:
            words.append(rng.choice(["?", "!", "42", "3.14", "...", "(ok)"]))
    return rng.choice(["", " ", "\n"]) + " ".join(words)


def random_case(rng: random.Random) -> tuple[list[Message], str | None, dict[str, int]]:
    messages = turns(*(random_text(rng) for _ in range(2 * rng.randint(0, 40) + 1)))
    system = rng.choice([None, "", "Be brief.", random_text(rng)])
    limits = {
        "max_total_chars": rng.choice([10, 100, 500, 2000, 10**6]),
        "context_length": rng.choice([30, 60, 120, 250, 500, 1000, 4096]),
        "max_tokens": rng.choice([1, 10, 50, 200]),
    }
    return messages, system, limits


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_same_prompt_as_the_rule_as_first_written(name: str) -> None:
    rng = random.Random(f"fit-{name}")
    render = TEMPLATES[name].render
    outcomes = set()
    for _ in range(250):
        messages, system, limits = random_case(rng)
        expected: FittedPrompt | str
        try:
            expected = reference_fit(
                messages, system, render=render, tokenize=fake_tokenize, **limits
            )
        except RuleViolation as error:
            expected = error.message
        try:
            fitted: FittedPrompt | str = fit_conversation(
                messages, system, render=render, tokenize=fake_tokenize, **limits
            )
        except RuleViolation as error:
            fitted = error.message
        assert fitted == expected, (messages, system, limits)
        if isinstance(expected, str):
            outcomes.add("too long")
        else:
            outcomes.add("kept all" if expected.kept_messages == messages else "forgot")
    assert outcomes == {"too long", "kept all", "forgot"}  # the cases cover every outcome


@dataclass
class CountingModel:
    """A render and a tokenize that count their calls and the characters they go through."""

    template: ChatTemplate
    renders: int = 0
    rendered_messages: int = 0
    prompt_tokenizes: int = 0
    content_tokenizes: int = 0
    prompts: set[str] = field(default_factory=set)

    def render(self, messages: Sequence[Message], system: str | None) -> str:
        self.renders += 1
        self.rendered_messages += len(messages)
        text = self.template.render(messages, system)
        self.prompts.add(text)
        return text

    def tokenize(self, text: str) -> list[int]:
        if text in self.prompts:
            self.prompt_tokenizes += 1
        else:
            self.content_tokenizes += 1
        return fake_tokenize(text)


@pytest.mark.parametrize(
    ("name", "kept_share"),
    [("chatml", 0.02), ("chatml", 0.5), ("chatml", 0.98), ("preamble", 0.02), ("preamble", 0.5)],
)
def test_forgetting_ten_thousand_messages_takes_a_logarithmic_number_of_renders(
    name: str, kept_share: float
) -> None:
    rng = random.Random(f"count-{name}-{kept_share}")
    messages = turns(*(random_text(rng) for _ in range(10_001)))
    whole = len(fake_tokenize(TEMPLATES[name].render(messages, None)))
    counting = CountingModel(TEMPLATES[name])
    fitted = fit_conversation(
        messages,
        None,
        render=counting.render,
        tokenize=counting.tokenize,
        max_total_chars=10**9,
        context_length=int(whole * kept_share) + 100,
        max_tokens=100,
    )
    kept = len(fitted.kept_messages)
    assert 1 < kept < len(messages)
    assert counting.renders <= 4 + 2 * math.ceil(math.log2(len(messages)))
    assert counting.prompt_tokenizes == counting.renders
    assert counting.content_tokenizes <= len(messages) - 1  # each history message once
    if name == "chatml":
        # An overhead the estimate gets right: the lone question, the last rounds, the prompt
        # and the one with a round more; never the whole conversation.
        assert counting.renders <= 4
        assert counting.rendered_messages <= 2 * kept + 40


def test_a_conversation_that_fits_is_rendered_once() -> None:
    counting = CountingModel(TEMPLATES["chatml"])
    messages = turns("Hi", "Hello!", "What is the capital of France?")
    fitted = fit_conversation(
        messages,
        "Be brief.",
        render=counting.render,
        tokenize=counting.tokenize,
        max_total_chars=2000,
        context_length=4096,
        max_tokens=1024,
    )
    assert fitted.kept_messages == messages
    assert (counting.renders, counting.prompt_tokenizes, counting.content_tokenizes) == (1, 1, 0)


def test_a_lone_question_too_long_for_the_context_is_the_clients_error() -> None:
    with pytest.raises(RuleViolation, match=r"max_output_tokens \(50\) exceed") as raised:
        fit_conversation(
            turns("a b c", "d", "a long question " * 20),
            None,
            render=TEMPLATES["chatml"].render,
            tokenize=fake_tokenize,
            max_total_chars=2000,
            context_length=100,
            max_tokens=50,
        )
    assert raised.value.code == 336003
