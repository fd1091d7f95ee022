"""The peak resident memory of a server process and its children, sampled while a run goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psutil

# Often enough to catch a batch's peak, rarely enough to cost nothing on a 2-core machine.
INTERVAL_S = 0.1


def tree_rss(pid: int) -> int | None:
    """RSS of the process and all its descendants; None once it is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for process in processes:
        # A child may exit between listing and reading: it then holds no memory.
        with contextlib.suppress(psutil.Error):
            total += int(process.memory_info().rss)
    return total


@dataclass(slots=True)
class Peak:
    bytes: int | None = None

    def see(self, value: int | None) -> None:
        if value is not None and (self.bytes is None or value > self.bytes):
            self.bytes = value


@contextlib.asynccontextmanager
async def peak_rss(pid: int | None) -> AsyncIterator[Peak]:
    """Yields a `Peak` updated in the background until the block ends; empty without a pid."""
    peak = Peak()
    if pid is None:
        yield peak
        return

    async def sample() -> None:
        while True:
            peak.see(tree_rss(pid))
            await asyncio.sleep(INTERVAL_S)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        peak.see(tree_rss(pid))
