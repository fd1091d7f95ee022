"""What moderation adds to a request: checking a 2,000-character request (question and history,
Chinese and English mixed) and guarding a 2,000-character answer streamed in token-sized deltas,
with the shipped lists and with 10,000 more terms. The target: under 1 ms a request with
the shipped lists.

    .venv/bin/python bench/moderation.py [--runs 2000]

Prints a markdown table. Single-threaded and CPU-bound: on a loaded machine the p99 grows first.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from functools import partial

from qfserve.chat.conversation import Message
from qfserve.chat.safety import Moderator, StreamGuard, WordList, check_messages
from qfserve.chat.safety.lists import Entry, default_entries

ROUNDS = [
    "我们下个月打算去四川自驾游，从成都出发，大概十天时间，你有什么路线推荐吗？",
    "Thanks! Could you also suggest a budget for fuel, hotels and food, in yuan, for two people?",
    "川藏线的路况怎么样？需要准备哪些装备，比如防寒衣物、氧气瓶和常用药品？",
    "What is the best season to go, and how busy are the roads during the National Day holiday?",
    "如果遇到高原反应应该怎么办？沿途有哪些城市可以看病，电话区号是多少？",
]
ANSWER = (
    "以下是一些适合自驾游的路线推荐：川藏线，从成都出发，沿着川藏公路一路向西，经过稻城亚丁、"
    "理塘、巴塘、芒康等美景，最终到达拉萨。The best season is from May to October; plan about "
    "2,000 km and 10-15 days, with a budget of 8,000 to 12,000 yuan for two people. "
)


def request(chars: int) -> list[Message]:
    """Rounds of questions and answers, then a question, `chars` characters in all."""
    messages: list[Message] = []
    index = 0
    while sum(len(m.content) for m in messages) + 300 < chars:
        messages.append(Message("user", ROUNDS[index % len(ROUNDS)]))
        messages.append(Message("assistant", ANSWER[: 60 + 7 * index]))
        index += 1
    rest = chars - sum(len(m.content) for m in messages)
    messages.append(Message("user", ("".join(ROUNDS) * 2)[:rest]))
    return messages


def generated(count: int, seed: int = 11) -> list[Entry]:
    rng = random.Random(seed)
    entries: list[Entry] = []
    for index in range(count):
        if index % 10:  # mostly Chinese, as real lists are
            term = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(4, 8)))
        else:
            term = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10))
        entries.append(("generated", term))
    return entries


def timings(action: Callable[[], object], runs: int) -> list[float]:
    action()  # warm the fold cache
    spent = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        action()
        spent.append((time.perf_counter_ns() - start) / 1e6)
    return spent


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def guard_answer(moderator: Moderator, deltas: list[str]) -> None:
    guard = StreamGuard(moderator)
    for delta in deltas:
        guard.feed(delta)
    guard.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()

    messages = request(2000)
    question = [Message("user", ("".join(ROUNDS) * 8)[:2000])]
    answer = (ANSWER * 12)[:2000]
    deltas = [answer[i : i + 3] for i in range(0, len(answer), 3)]  # about a token each
    start = time.perf_counter()
    large = Moderator(WordList([*default_entries(), *generated(10_000)]))
    build_ms = (time.perf_counter() - start) * 1000
    lists = [("shipped lists", Moderator.default()), ("shipped + 10,000 terms", large)]

    print(f"request: {len(messages)} messages, {sum(len(m.content) for m in messages)} chars;")
    print(f"answer: {len(answer)} chars in {len(deltas)} deltas; {args.runs} runs each\n")
    print("(median / p99, milliseconds)\n")
    print("| lists | terms | 2,000-char request | 2,000-char question | 2,000-char answer stream |")
    print("|---|---:|---:|---:|---:|")
    for name, moderator in lists:
        assert check_messages(messages, moderator) is None, "the request must be clean"
        assert check_messages(question, moderator) is None, "the question must be clean"
        cells = [
            timings(partial(check_messages, messages, moderator), args.runs),
            timings(partial(check_messages, question, moderator), args.runs),
            timings(partial(guard_answer, moderator, deltas), max(1, args.runs // 10)),
        ]
        shown = " | ".join(f"{statistics.median(c):.3f} / {p99(c):.3f}" for c in cells)
        print(f"| {name} | {len(moderator.words)} | {shown} |")
    print(f"\nbuilding the 10,000-term automaton (a reload): {build_ms:.0f} ms")


if __name__ == "__main__":
    main()
