"""The conversation rules of the chat API: message order, lengths, and forgetting old rounds.

Pure functions over plain data: no I/O, no HTTP. Errors carry the page's own wording.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qfserve.errors import InvalidMessages, TooManyCharacters, TooManyTokens


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


# The endpoint's chat template, and its tokenizer: messages (and the system prompt) to prompt
# text, and prompt text to token ids.
Render = Callable[[Sequence[Message], str | None], str]
Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    """The conversation after forgetting, and the prompt the model reads."""

    kept_messages: list[Message]
    prompt_text: str
    prompt_tokens: list[int]


def check_messages(
    messages: Sequence[Message], *, max_question_chars: int, max_messages: int
) -> None:
    """Raise 336003 with the reason when the messages break a rule of the page.

    The count comes first: it bounds every later pass over the messages.
    """
    if len(messages) > max_messages:
        raise InvalidMessages(f"the number of messages must not exceed {max_messages}")
    if not messages:
        raise InvalidMessages("the messages must not be empty")
    if len(messages) % 2 == 0:
        raise InvalidMessages("the length of messages must be an odd number")
    for index, message in enumerate(messages):
        if index % 2 == 0 and message.role != "user":
            raise InvalidMessages(
                "the role of message with even index in the messages must be user"
            )
        if index % 2 == 1 and message.role != "assistant":
            raise InvalidMessages(
                "the role of message with odd index in the messages must be assistant"
            )
        if not message.content or message.content.isspace():
            raise InvalidMessages(f"the content of message {index} must not be empty")
    if len(messages[-1].content) > max_question_chars:
        raise TooManyCharacters(f"the max length of current question is {max_question_chars}")


def fit_conversation(
    messages: Sequence[Message],
    system: str | None,
    *,
    render: Render,
    tokenize: Tokenize,
    max_total_chars: int,
    context_length: int,
    max_tokens: int,
) -> FittedPrompt:
    """Both halves of forgetting: the oldest rounds go until all contents fit `max_total_chars`,
    then further rounds until the prompt leaves `max_tokens` of the model's context for the
    answer. A lone question too long for that is the client's error (336003).

    The result is the rule's as the page states it (forget a round, render, tokenize, repeat)
    without a render per forgotten round. A short conversation is rendered whole first: most
    fit. Otherwise each history message is tokenized once, the template's overhead per message
    is measured on the last rounds, the cut is estimated in one pass, and renders at and beside
    the estimate confirm it; a poor estimate is corrected by galloping and bisection, so it
    costs O(log n) renders, not O(n). This relies on a forgotten round never lengthening the
    prompt, as with every real template.

    `messages` must have passed `check_messages`.
    """
    if len(messages) % 2 == 0:
        raise ValueError("the messages must be checked first: their count is even")
    first = _first_kept_by_chars(messages, max_total_chars)
    search = _PromptSearch(messages[first:], system, render, tokenize, context_length - max_tokens)
    # From here on, in rounds forgotten after the character rule: the last is the lone question.
    rounds = search.rounds
    too_long = -1  # the most rounds known to leave too long a prompt (none yet)
    if rounds <= _SHORT_ROUNDS:
        if search.fits(0):
            return search.prompt(0)
        too_long = 0
    if not search.fits(rounds):
        raise TooManyTokens(
            f"the prompt and max_output_tokens ({max_tokens}) exceed the model's context of "
            f"{context_length} tokens"
        )
    if rounds - too_long == 1:
        return search.prompt(rounds)
    guess = max(search.estimate_rounds_to_forget(), too_long + 1)
    return search.prompt(search.fewest_rounds_to_forget(too_long, guess))


# Conversations of at most this many rounds are rendered whole before any estimate.
_SHORT_ROUNDS = 8
# The rounds before the question on which the template's overhead per message is measured.
_SAMPLE_ROUNDS = 8


def _first_kept_by_chars(messages: Sequence[Message], max_total_chars: int) -> int:
    """The index of the first message the character rule keeps: one pass over the contents."""
    total = sum(len(m.content) for m in messages)
    first = 0
    while first < len(messages) - 1 and total > max_total_chars:
        total -= len(messages[first].content) + len(messages[first + 1].content)
        first += 2
    return first


class _PromptSearch:
    """The prompt with a number of the oldest rounds forgotten: rendered and tokenized at most
    once per number, and estimated for all of them from each message's own tokens."""

    def __init__(
        self,
        messages: Sequence[Message],
        system: str | None,
        render: Render,
        tokenize: Tokenize,
        prompt_budget: int,
    ) -> None:
        self._messages = messages
        self._system = system
        self._render = render
        self._tokenize = tokenize
        self._budget = prompt_budget
        self._prompts: dict[int, FittedPrompt] = {}
        self.rounds = (len(messages) - 1) // 2  # all forgotten: the lone question

    def prompt(self, forgotten: int) -> FittedPrompt:
        fitted = self._prompts.get(forgotten)
        if fitted is None:
            kept = list(self._messages[2 * forgotten :])
            text = self._render(kept, self._system)
            fitted = self._prompts[forgotten] = FittedPrompt(kept, text, self._tokenize(text))
        return fitted

    def token_count(self, forgotten: int) -> int:
        return len(self.prompt(forgotten).prompt_tokens)

    def fits(self, forgotten: int) -> bool:
        return self.token_count(forgotten) <= self._budget

    def estimate_rounds_to_forget(self) -> int:
        """The fewest rounds to forget by the estimate, in one pass from the question back.

        The lone question's prompt and the one with the last few rounds are exact; each older
        message adds its own tokens and the template's overhead per message measured between
        those two.
        """
        history = [len(self._tokenize(m.content)) for m in self._messages[:-1]]
        sample = min(_SAMPLE_ROUNDS, self.rounds)
        sampled = self.token_count(self.rounds - sample) - self.token_count(self.rounds)
        overhead = (sampled - sum(history[-2 * sample :])) / (2 * sample)
        estimate = float(self.token_count(self.rounds))
        forgotten = self.rounds
        while forgotten > 0:
            index = 2 * (forgotten - 1)
            estimate += history[index] + history[index + 1] + 2 * overhead
            if estimate > self._budget:
                break
            forgotten -= 1
        return forgotten

    def fewest_rounds_to_forget(self, too_long: int, guess: int) -> int:
        """The fewest rounds whose forgetting makes the prompt fit, knowing that forgetting
        `too_long` does not (-1: nothing known) and forgetting all does: gallop from the guess
        to bracket the cut, then bisect."""
        fitting = self.rounds
        step = 1
        if self.fits(guess):
            fitting = guess
            while fitting - too_long > 1:
                probe = max(fitting - step, too_long + 1)
                if not self.fits(probe):
                    too_long = probe
                    break
                fitting, step = probe, step * 2
        else:
            too_long = guess
            while fitting - too_long > 1:
                probe = min(too_long + step, fitting - 1)
                if self.fits(probe):
                    fitting = probe
                    break
                too_long, step = probe, step * 2
        while fitting - too_long > 1:
            middle = (too_long + fitting) // 2
            if self.fits(middle):
                fitting = middle
            else:
                too_long = middle
        return fitting
