"""Continuous-batching scheduler: pure bookkeeping, no llama.cpp, tested without a model.

The embedded engine owns `n_slots` llama.cpp sequence ids ("slots"). Each slot's KV cache keeps the
tokens of the last request it served after that request ends, so a later prompt sharing a prefix
with them skips prefilling it (the prefix cache).

Before a request reaches the engine thread, `Admission` bounds the requests in flight to
`n_slots + max_waiting`: past that, the waiting queue is full and the request is refused at once
with OverloadedError (336100).

One engine step, `Scheduler.schedule(now)` (or `admit(now)`, then `plan(step)`):

1. Expire: waiting requests older than `max_wait_seconds` leave the queue; the engine fails them
   with OverloadedError (336100).
2. Admit, first come first served, while a slot is idle: the request takes the idle slot whose
   cached tokens share the longest prefix with its prompt, else the least recently used idle slot
   (`choose_slot`, a pure function; LRU eviction of cached prefixes follows from it). The shared
   prefix is reused up to `len(prompt) - 1` tokens: the last prompt token is always decoded again,
   since its logits give the first answer token. The engine drops the slot's KV tail past it.
   With a tiered prefix cache (`stored_prefix`), a prompt that a saved state covers further than
   any slot takes the least recently used idle slot instead (the restored state replaces that
   slot's whole cache); the engine restores it and reports the tokens it got (`restored`).
   The slot's previous tokens go with the request (`displaced`), for the engine to save first.
   With a shared KV pool (`pool_cells`), a request is admitted only when the pool can hold its
   whole reservation, its prompt plus `max_tokens` (capped at `max_seq_cells`), counting the
   reservations of running sequences and the cached prefixes of idle slots as held. When cells
   are short, other idle slots' cached prefixes are evicted, least recently used first; they go
   with the request (`evicted`) for the engine to save and clear before it uses the slot. If even
   that would not make room, the request waits at the head of the queue and nobody behind it
   goes first, so a long request is never starved by short ones; running sequences finishing
   free its cells.
3. Plan one batch: every sequence that is generating feeds its last sampled token (one token
   each, so running streams advance every step); sequences still prefilling share a budget of
   `prefill_chunk` prompt tokens per step, oldest first. A chunk that reaches the end of a
   sequence's known tokens asks for logits.

After `llama_decode` the engine calls `advance(step)`, samples, `append`s tokens and `finish`es
sequences. `abort` is idempotent: unknown, finished or already aborted keys are a no-op.

Threads: `Admission` is shared by the event loop and the engine thread (it has a lock); everything
else is used by the engine thread only, except `stats()`, which only reads ints and lengths.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from qfserve.engines.base import EngineStats
from qfserve.errors import EngineUnavailable, OverloadedError

P = TypeVar("P")


class Admission:
    """Requests in flight (waiting or running), bounded by `n_slots + max_waiting`.

    Checked on the event loop before a request is handed to the engine thread, so a refusal is
    immediate; the engine thread `leave`s once per request when it is done with it.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._in_flight = 0
        self._open = True
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self, then: Callable[[], object] | None = None) -> None:
        """Count a request in, or refuse it. `then` runs under the lock, so that a request handed
        over in it is never lost to a concurrent `close`."""
        with self._lock:
            if not self._open:
                raise EngineUnavailable()
            if self._in_flight >= self._capacity:
                raise OverloadedError()
            self._in_flight += 1
            if then is not None:
                then()

    def leave(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            if self._in_flight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is in flight (True) or `timeout` seconds pass (False)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def close(self) -> None:
        """Refuse every later request; the caller then fails what was already queued."""
        with self._lock:
            self._open = False


@dataclass(eq=False, slots=True)
class SeqState(Generic[P]):
    """One request from admission to finish. `tokens` is the prompt, then the sampled tokens."""

    key: int
    tokens: list[int]
    arrival: float
    payload: P
    n_prompt: int = 0
    slot: int = -1
    # Tokens of `tokens` already in the slot's KV cache; the rest still have to be decoded.
    n_past: int = 0
    n_cached: int = 0
    # What the slot's KV cache held when this request took it (the engine may save it first),
    # and how much of the prompt a saved state outside the slots covers (0: not enough more).
    displaced: list[int] = field(default_factory=list)
    n_stored: int = 0
    # The most tokens the request may answer (0: up to the end of its context), and the KV cells
    # it reserves in a shared pool (its prompt plus those), set by the scheduler when it is added.
    max_tokens: int = 0
    cells: int = 0
    # Idle slots whose cached prefixes were evicted to make room for this request: (seq id,
    # tokens), for the engine to save and clear before it uses its own slot.
    evicted: list[tuple[int, list[int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n_prompt = len(self.tokens)

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt


@dataclass(slots=True)
class Slot:
    """A llama.cpp sequence id. While idle, `cached` is what its KV cache holds, by position."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    last_used: int = 0
    busy: bool = False


@dataclass(slots=True)
class Step(Generic[P]):
    expired: list[SeqState[P]] = field(default_factory=list)
    admitted: list[SeqState[P]] = field(default_factory=list)
    # (sequence, n): feed seq.tokens[seq.n_past : seq.n_past + n] at positions n_past onwards.
    chunks: list[tuple[SeqState[P], int]] = field(default_factory=list)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# A slot's cache is taken over for a shared prefix only if that keeps at least this share of it.
# Every prompt of an endpoint shares the chat template's opening (the default system prompt):
# without the bar, a new conversation would match any slot by that opening alone and destroy the
# history cached there, and conversations played side by side would evict each other each turn.
KEEP_AT_LEAST = 0.5

# A saved state is restored only if it covers at least this many more prompt tokens than the slot:
# copying a state of a whole conversation back costs about what prefilling a few tokens does.
MIN_RESTORE_GAIN = 16


def choose_slot(slots: Iterable[Slot], prompt: Sequence[int]) -> Slot | None:
    """The idle slot whose cache shares the longest prefix with `prompt`, among those that would
    keep at least half of their cache; else the least recently used idle slot."""
    best: Slot | None = None
    best_key = (-1, 0)
    oldest: Slot | None = None
    for slot in slots:
        if slot.busy:
            continue
        if oldest is None or slot.last_used < oldest.last_used:
            oldest = slot
        shared = common_prefix_length(slot.cached, prompt)
        if not slot.cached or shared < KEEP_AT_LEAST * len(slot.cached):
            continue
        key = (shared, -slot.last_used)
        if best is None or key > best_key:
            best, best_key = slot, key
    return best or oldest


def least_recent_idle(slots: Iterable[Slot]) -> Slot | None:
    idle = [slot for slot in slots if not slot.busy]
    return min(idle, key=lambda slot: slot.last_used) if idle else None


class Scheduler(Generic[P]):
    def __init__(
        self,
        *,
        n_slots: int,
        max_wait_seconds: float,
        prefill_chunk: int,
        stored_prefix: Callable[[Sequence[int]], int] | None = None,
        pool_cells: int | None = None,
        max_seq_cells: int | None = None,
    ) -> None:
        """`pool_cells`: the KV cells all slots share (None: each slot has cells of its own, no
        accounting). `max_seq_cells`: the most cells one sequence can hold (its context)."""
        if n_slots < 1 or prefill_chunk < 1:
            raise ValueError("n_slots and prefill_chunk must be at least 1")
        if pool_cells is not None and pool_cells < (max_seq_cells or 1):
            raise ValueError("the KV pool must hold at least one sequence's context")
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self.max_wait_seconds = max_wait_seconds
        self.prefill_chunk = prefill_chunk
        self.stored_prefix = stored_prefix
        self.pool_cells = pool_cells
        self.max_seq_cells = max_seq_cells or pool_cells
        self.waiting: deque[SeqState[P]] = deque()
        # Insertion order is admission order: prefill budget goes to the oldest first.
        self.running: dict[int, SeqState[P]] = {}
        self._tick = 0
        # Pool cells the running sequences reserved (their prompts plus `max_tokens`).
        self.cells_reserved = 0
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.generated_tokens = 0

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, seq: SeqState[P]) -> None:
        if seq.n_prompt == 0:
            raise ValueError("a prompt needs at least one token")
        # Without a `max_tokens`, the sequence may grow to the end of its context.
        cells = seq.n_prompt + seq.max_tokens if seq.max_tokens > 0 else None
        if self.max_seq_cells is not None:
            cells = min(cells or self.max_seq_cells, self.max_seq_cells)
        seq.cells = cells or seq.n_prompt
        self.waiting.append(seq)

    def schedule(self, now: float) -> Step[P]:
        step = self.admit(now)
        self.plan(step)
        return step

    def admit(self, now: float) -> Step[P]:
        """Steps 1 and 2: expire, then admit. The engine may restore saved states into the
        admitted sequences' slots before `plan`."""
        step: Step[P] = Step()
        if self.waiting:
            self._expire(now, step)
        while self.waiting and len(self.running) < len(self.slots):
            if not self._admit(self.waiting[0], step):
                break
            self.waiting.popleft()
        return step

    @property
    def cells_cached(self) -> int:
        """Pool cells the idle slots' cached prefixes hold."""
        return sum(len(slot.cached) for slot in self.slots if not slot.busy)

    def plan(self, step: Step[P]) -> None:
        """Step 3: the batch's chunks."""
        budget = self.prefill_chunk
        for seq in self.running.values():
            remaining = len(seq.tokens) - seq.n_past
            if seq.n_generated > 0:
                step.chunks.append((seq, remaining))
            elif budget > 0:
                n = min(remaining, budget)
                budget -= n
                step.chunks.append((seq, n))

    def advance(self, step: Step[P]) -> None:
        """The batch of `step` was decoded: its tokens are in the KV cache now."""
        for seq, n in step.chunks:
            seq.n_past += n

    def append(self, seq: SeqState[P], token: int) -> None:
        seq.tokens.append(token)
        self.generated_tokens += 1

    def finish(self, seq: SeqState[P], *, keep_cache: bool = True) -> None:
        """Free the sequence's slot. Idempotent. Without `keep_cache` the engine cleared its KV."""
        if self.running.pop(seq.key, None) is None:
            return
        self.cells_reserved -= seq.cells
        slot = self.slots[seq.slot]
        slot.busy = False
        slot.cached = seq.tokens[: seq.n_past] if keep_cache else []
        self._tick += 1
        slot.last_used = self._tick

    def abort(self, key: int) -> SeqState[P] | None:
        """Remove a waiting or running request; None if it is unknown or already finished."""
        seq = self.running.get(key)
        if seq is not None:
            self.finish(seq)
            return seq
        for i, waiting in enumerate(self.waiting):
            if waiting.key == key:
                del self.waiting[i]
                return waiting
        return None

    def drain(self) -> list[SeqState[P]]:
        """Remove every request (shutdown); the slots keep their caches."""
        every = [*self.running.values(), *self.waiting]
        for seq in list(self.running.values()):
            self.finish(seq)
        self.waiting.clear()
        return every

    def forget_prefix(self, seq: SeqState[P]) -> None:
        """The engine could not keep the reused prefix: the sequence starts from position 0."""
        self.cached_prompt_tokens -= seq.n_cached
        seq.n_past = seq.n_cached = 0

    def restored(self, seq: SeqState[P], n_tokens: int) -> None:
        """The engine put a saved state of the prompt's first `n_tokens` into the slot."""
        self.cached_prompt_tokens += n_tokens - seq.n_cached
        seq.n_past = seq.n_cached = n_tokens

    def evict_idle(self) -> list[int]:
        """Forget the cached prefixes of idle slots; their seq ids, for the engine to clear."""
        evicted = [s.seq_id for s in self.slots if not s.busy and s.cached]
        for seq_id in evicted:
            self.slots[seq_id].cached = []
        return evicted

    def stats(self) -> EngineStats:
        pooled = self.pool_cells is not None
        return EngineStats(
            running=len(self.running),
            waiting=len(self.waiting),
            prompt_tokens=self.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
            generated_tokens=self.generated_tokens,
            kv_pool_cells=self.pool_cells or 0,
            kv_cells_reserved=self.cells_reserved if pooled else 0,
            kv_cells_cached=self.cells_cached if pooled else 0,
        )

    def _expire(self, now: float, step: Step[P]) -> None:
        deadline = now - self.max_wait_seconds
        if all(seq.arrival > deadline for seq in self.waiting):
            return
        keep: deque[SeqState[P]] = deque()
        for seq in self.waiting:
            (step.expired if seq.arrival <= deadline else keep).append(seq)
        self.waiting = keep

    def _admit(self, seq: SeqState[P], step: Step[P]) -> bool:
        """Give `seq` a slot; False, changing nothing, if the pool cannot hold it yet."""
        slot = choose_slot(self.slots, seq.tokens)
        assert slot is not None  # the caller checked that a slot is idle
        reuse = min(common_prefix_length(slot.cached, seq.tokens), seq.n_prompt - 1)
        stored = 0
        if self.stored_prefix is not None:
            stored = min(self.stored_prefix(seq.tokens), seq.n_prompt - 1)
            if stored >= reuse + MIN_RESTORE_GAIN:
                slot = least_recent_idle(self.slots) or slot
                reuse = min(common_prefix_length(slot.cached, seq.tokens), seq.n_prompt - 1)
        evicted = self._make_room(seq, slot)
        if evicted is None:
            return False
        seq.evicted = [(victim.seq_id, victim.cached) for victim in evicted]
        for victim in evicted:
            victim.cached = []
        seq.displaced = slot.cached
        seq.n_stored = stored if stored >= reuse + MIN_RESTORE_GAIN else 0
        slot.busy, slot.cached = True, []
        seq.slot, seq.n_past, seq.n_cached = slot.seq_id, max(0, reuse), max(0, reuse)
        self.running[seq.key] = seq
        self.cells_reserved += seq.cells
        self.prompt_tokens += seq.n_prompt
        self.cached_prompt_tokens += seq.n_cached
        step.admitted.append(seq)
        return True

    def _make_room(self, seq: SeqState[P], slot: Slot) -> list[Slot] | None:
        """The idle slots, least recently used first, whose cached prefixes must go for the pool
        to hold `seq` in `slot` (whose own cache becomes part of `seq`'s cells or is dropped);
        None if even evicting every one would not be enough."""
        if self.pool_cells is None:
            return []
        free = self.pool_cells - self.cells_reserved - self.cells_cached + len(slot.cached)
        if seq.cells <= free:
            return []
        victims = sorted(
            (s for s in self.slots if not s.busy and s is not slot and s.cached),
            key=lambda s: s.last_used,
        )
        if seq.cells > free + sum(len(s.cached) for s in victims):
            return None
        evicted: list[Slot] = []
        for victim in victims:
            if seq.cells <= free:
                break
            evicted.append(victim)
            free += len(victim.cached)
        return evicted
