"""The conversation rules of the chat API: message order, lengths, and forgetting old rounds.

Pure functions over plain data: no I/O, no HTTP. Errors carry the page's own wording.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qfserve.chat.formats import ToolCall
from qfserve.errors import InvalidMessages, TooManyCharacters, TooManyTokens


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    # An assistant message's calls of the client's tools, and the call a `tool` message answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @property
    def chars(self) -> int:
        """What the character rules count: the content, and the calls' names and arguments."""
        return len(self.content) + sum(len(c.name) + len(c.arguments) for c in self.tool_calls)


def uses_tools(messages: Sequence[Message]) -> bool:
    return any(m.role == "tool" or m.tool_calls for m in messages)


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

    The count comes first: it bounds every later pass over the messages. A conversation with
    tool calls follows the rounds of `_check_tool_rounds`; any other the page's alternation.
    """
    if len(messages) > max_messages:
        raise InvalidMessages(f"the number of messages must not exceed {max_messages}")
    if not messages:
        raise InvalidMessages("the messages must not be empty")
    if uses_tools(messages):
        _check_tool_rounds(messages)
    else:
        _check_alternation(messages)
    # The question is the last user message: a tool's result after it is no question.
    question = next(m for m in reversed(messages) if m.role == "user")
    if len(question.content) > max_question_chars:
        raise TooManyCharacters(f"the max length of current question is {max_question_chars}")


def _check_alternation(messages: Sequence[Message]) -> None:
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
        _check_content(index, message)


def _check_content(index: int, message: Message) -> None:
    if not message.content or message.content.isspace():
        raise InvalidMessages(f"the content of message {index} must not be empty")


def _check_tool_rounds(messages: Sequence[Message]) -> None:
    """Rounds with tool calls: `user, (assistant with tool_calls, tool...)*, assistant`, the
    last round ending with the user's question or with the results of the last calls. Each
    call is answered by one `tool` message naming it by `tool_call_id`, right after the call.
    The user may also speak right after results, as OpenAI allows: the round then has no
    answer of its own."""
    expected: tuple[str, ...] = ("user",)
    pending: dict[str, str] = {}  # calls of the last assistant message not answered yet
    for index, message in enumerate(messages):
        role = message.role
        if role == "tool":
            if not pending:
                raise InvalidMessages(
                    f"message {index}: a tool message must answer a call of the assistant "
                    "message before it"
                )
            answered = message.tool_call_id
            if answered is None or answered not in pending:
                raise InvalidMessages(
                    f"message {index}: tool_call_id must name an unanswered call of the "
                    f"assistant message before it: one of {sorted(pending)}"
                )
            del pending[answered]
            expected = ("assistant", "user")
            continue
        if pending:
            raise InvalidMessages(
                f"message {index}: the calls {sorted(pending)} must each be answered by a tool "
                "message first"
            )
        if role not in expected:
            roles = " or ".join(expected)
            raise InvalidMessages(f"message {index}: the role must be {roles}, not {role}")
        if role == "assistant" and message.tool_calls:
            pending = {call.id: call.name for call in message.tool_calls}
            if len(pending) != len(message.tool_calls):
                raise InvalidMessages(f"message {index}: the ids of tool_calls must differ")
            continue
        _check_content(index, message)
        expected = ("assistant",) if role == "user" else ("user",)
    if pending:
        raise InvalidMessages(
            f"the calls {sorted(pending)} must each be answered by a tool message"
        )
    if messages[-1].role == "assistant":
        raise InvalidMessages("the last message must be the user's, or a tool's result")


def rounds(messages: Sequence[Message]) -> list[int]:
    """Where each round begins: at each user message. A round is what forgetting drops whole,
    so that a call is never kept without its results, nor results without their call."""
    return [index for index, message in enumerate(messages) if message.role == "user"]


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

    A round is a question and what answers it (with tool calls: the calls, their results and
    the answer after them), so forgetting never splits a call from its results.

    `messages` must have passed `check_messages`.
    """
    if not messages or messages[0].role != "user":
        raise ValueError("the messages must be checked first: they must begin with the user's")
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
    total = sum(m.chars for m in messages)
    starts = rounds(messages)
    kept = 0
    while kept < len(starts) - 1 and total > max_total_chars:
        total -= sum(m.chars for m in messages[starts[kept] : starts[kept + 1]])
        kept += 1
    return starts[kept]


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
        self._starts = rounds(messages)
        self.rounds = len(self._starts) - 1  # all forgotten: the lone question

    def prompt(self, forgotten: int) -> FittedPrompt:
        fitted = self._prompts.get(forgotten)
        if fitted is None:
            kept = list(self._messages[self._starts[forgotten] :])
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
        starts = self._starts
        history = [_content_tokens(m, self._tokenize) for m in self._messages[: starts[-1]]]
        sample = min(_SAMPLE_ROUNDS, self.rounds)
        sampled = self.token_count(self.rounds - sample) - self.token_count(self.rounds)
        sampled_messages = starts[-1] - starts[-1 - sample]
        overhead = (sampled - sum(history[starts[-1 - sample] :])) / sampled_messages
        estimate = float(self.token_count(self.rounds))
        forgotten = self.rounds
        while forgotten > 0:
            first, end = starts[forgotten - 1], starts[forgotten]
            estimate += sum(history[first:end]) + (end - first) * overhead
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


def _content_tokens(message: Message, tokenize: Tokenize) -> int:
    calls = "".join(call.name + call.arguments for call in message.tool_calls)
    return len(tokenize(message.content + calls))
