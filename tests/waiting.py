"""Waiting in tests: for a condition, polled against a deadline, never for a fixed time.

What a test waits for (a ledger row written off the request path, a log line, a replica's health)
comes as soon as it comes: the test goes on then, and fails with `what` if it never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """`condition`'s first true value, called every `interval` seconds; AssertionError if it is
    not true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "the condition",
) -> T:
    """`wait_until` inside an event loop: the loop runs on between checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)
