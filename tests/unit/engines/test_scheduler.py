"""The scheduler without a model: hand-made prompts and sampled tokens, as the engine would feed."""

from __future__ import annotations

import random
import threading

import pytest

from qfserve.engines.scheduler import (
    MIN_RESTORE_GAIN,
    Admission,
    Scheduler,
    SeqState,
    Slot,
    Step,
    choose_slot,
    common_prefix_length,
)
from qfserve.errors import EngineUnavailable, OverloadedError

Seq = SeqState[None]


def make(n_slots: int = 2, *, chunk: int = 8, wait: float = 10.0) -> Scheduler[None]:
    return Scheduler(n_slots=n_slots, max_wait_seconds=wait, prefill_chunk=chunk)


def seq(key: int, prompt: list[int], arrival: float = 0.0) -> Seq:
    return SeqState(key, list(prompt), arrival, None)


def fed(step: Step[None]) -> dict[int, int]:
    return {s.key: n for s, n in step.chunks}


def run_step(sched: Scheduler[None], now: float = 0.0) -> Step[None]:
    """Schedule, pretend the decode succeeded, and sample token 100 + key where logits came out."""
    step = sched.schedule(now)
    wants = [s for s, n in step.chunks if s.n_past + n == len(s.tokens)]
    sched.advance(step)
    for s in wants:
        sched.append(s, 100 + s.key)
    return step


# -- pure helpers ---------------------------------------------------------------------------------


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2


def test_choose_slot_prefers_longest_shared_prefix() -> None:
    slots = [Slot(0, [1, 2], last_used=1), Slot(1, [1, 2, 3, 4], last_used=5), Slot(2, [9])]
    assert choose_slot(slots, [1, 2, 3, 9]) is slots[1]


def test_choose_slot_falls_back_to_least_recently_used() -> None:
    slots = [Slot(0, [5], last_used=3), Slot(1, [6], last_used=1), Slot(2, [7], last_used=2)]
    assert choose_slot(slots, [1, 2]) is slots[1]


def test_a_shared_template_opening_does_not_take_another_conversations_slot() -> None:
    opening = [1, 2, 3]
    conversation_a = Slot(0, [*opening, *range(10, 30)], last_used=5)
    empty = Slot(1, [], last_used=0)
    assert choose_slot([conversation_a, empty], [*opening, 40, 41]) is empty
    # ...while the next turn of that conversation finds it.
    assert choose_slot([conversation_a, empty], [*opening, *range(10, 30), 7]) is conversation_a


def test_choose_slot_skips_busy_slots() -> None:
    slots = [Slot(0, [1, 2, 3], busy=True), Slot(1, [], last_used=4)]
    assert choose_slot(slots, [1, 2, 3]) is slots[1]
    slots[1].busy = True
    assert choose_slot(slots, [1]) is None


# -- admission ------------------------------------------------------------------------------------


def test_admission_refuses_past_capacity_and_after_close() -> None:
    gate = Admission(2)
    handed: list[int] = []
    gate.enter(lambda: handed.append(1))
    gate.enter()
    with pytest.raises(OverloadedError):
        gate.enter(lambda: handed.append(3))
    assert handed == [1]
    gate.leave()
    gate.enter()
    gate.close()
    with pytest.raises(EngineUnavailable):
        gate.enter()
    assert gate.in_flight == 2


def test_admission_counts_correctly_across_threads() -> None:
    gate = Admission(10_000)

    def worker() -> None:
        for _ in range(1000):
            gate.enter()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.in_flight == 4000


# -- scheduling -----------------------------------------------------------------------------------


def test_requests_wait_for_a_free_slot_first_come_first_served() -> None:
    sched = make(n_slots=1)
    a, b = seq(1, [1, 2]), seq(2, [3, 4])
    sched.add(a)
    sched.add(b)
    step = sched.schedule(0.0)
    assert step.admitted == [a] and list(sched.waiting) == [b]
    sched.finish(a)
    assert sched.schedule(0.0).admitted == [b]


def test_prefill_is_chunked_and_decoding_streams_keep_flowing() -> None:
    sched = make(n_slots=3, chunk=4)
    short = seq(1, [1, 2])
    sched.add(short)
    run_step(sched)  # prompt fed whole, first token sampled
    long_a, long_b = seq(2, list(range(10, 20))), seq(3, list(range(30, 36)))
    sched.add(long_a)
    sched.add(long_b)
    # The generating sequence feeds one token outside the budget; the oldest prompt takes the rest.
    assert fed(run_step(sched)) == {1: 1, 2: 4}
    assert fed(run_step(sched)) == {1: 1, 2: 4}
    assert fed(run_step(sched)) == {1: 1, 2: 2, 3: 2}
    assert long_a.n_generated == 1 and long_b.n_generated == 0
    assert fed(run_step(sched)) == {1: 1, 2: 1, 3: 4}
    assert long_b.n_generated == 1


def test_logits_only_at_the_end_of_known_tokens() -> None:
    sched = make(n_slots=1, chunk=3)
    s = seq(1, [1, 2, 3, 4, 5])
    sched.add(s)
    run_step(sched)
    assert s.n_past == 3 and s.n_generated == 0
    run_step(sched)
    assert s.n_past == 5 and s.tokens[-1] == 101
    run_step(sched)
    assert s.n_past == 6 and s.n_generated == 2


def test_prefix_cache_reuses_shared_prefix_but_redecodes_last_prompt_token() -> None:
    sched = make(n_slots=2, chunk=64)
    first = seq(1, [1, 2, 3, 4])
    sched.add(first)
    for _ in range(3):
        run_step(sched)
    sched.finish(first)
    # The KV cache holds the prompt and the answer but the last sampled token (never fed).
    assert first.tokens == [1, 2, 3, 4, 101, 101, 101]
    assert sched.slots[first.slot].cached == [1, 2, 3, 4, 101, 101]

    follow_up = seq(2, [1, 2, 3, 4, 101, 101, 101, 7, 8])
    sched.add(follow_up)
    step = run_step(sched)
    assert follow_up.slot == first.slot
    assert follow_up.n_cached == 6 and fed(step) == {2: 3}

    # Identical to a cached prompt: all of it comes from the cache but the last token, which is
    # decoded again for its logits.
    same = seq(3, [1, 2, 3, 4, 101, 101, 101, 7, 8])
    sched.finish(follow_up)
    sched.add(same)
    step = run_step(sched)
    assert same.slot == first.slot
    assert same.n_cached == 8 and fed(step) == {3: 1}
    stats = sched.stats()
    assert (stats.prompt_tokens, stats.cached_prompt_tokens) == (4 + 9 + 9, 6 + 8)


def test_unrelated_prompt_takes_the_least_recently_used_slot() -> None:
    sched = make(n_slots=2)
    a, b = seq(1, [1, 2, 3]), seq(2, [4, 5, 6])
    sched.add(a)
    sched.add(b)
    run_step(sched)
    sched.finish(b)
    sched.finish(a)  # a's slot is now the most recently used
    c = seq(3, [9, 9])
    sched.add(c)
    sched.schedule(0.0)
    assert c.slot == b.slot and c.n_cached == 0


def test_a_stored_prefix_longer_than_any_slots_takes_the_least_recently_used_slot() -> None:
    stored = [1, 2, 3, *range(50, 70)]
    sched: Scheduler[None] = Scheduler(
        n_slots=2,
        max_wait_seconds=10.0,
        prefill_chunk=64,
        stored_prefix=lambda prompt: common_prefix_length(stored, prompt),
    )
    sched.slots[0].cached, sched.slots[0].last_used = [1, 2, 3, 4, 5, 6], 1
    sched.slots[1].cached, sched.slots[1].last_used = [1, 2, 3, *range(50, 54), 9, 9], 2
    # Slot 1 would keep 7 tokens, the store has 23: the restored state replaces a whole slot's
    # cache, so the least recently used one goes, and its tokens go with the request.
    returning = seq(1, [*stored, 99])
    sched.add(returning)
    sched.schedule(0.0)
    assert returning.slot == 0
    assert returning.displaced == [1, 2, 3, 4, 5, 6]
    assert (returning.n_past, returning.n_stored) == (3, 23)
    assert sched.slots[0].cached == [] and sched.slots[1].cached[-1] == 9

    sched.restored(returning, 23)
    assert (returning.n_past, returning.n_cached) == (23, 23)
    assert sched.stats().cached_prompt_tokens == 23
    sched.finish(returning)


def test_a_stored_prefix_must_beat_the_slot_by_min_restore_gain() -> None:
    stored = [1, 2, 3, *range(50, 90)]

    def admitted(n_stored_tokens: int) -> Seq:
        sched: Scheduler[None] = Scheduler(
            n_slots=1,
            max_wait_seconds=10.0,
            prefill_chunk=64,
            stored_prefix=lambda prompt: common_prefix_length(stored, prompt),
        )
        sched.slots[0].cached = [1, 2, 3, 50, 51, 52, 53, 9]  # keeps 7
        request = seq(1, [*stored[:n_stored_tokens], 7])
        sched.add(request)
        sched.schedule(0.0)
        return request

    short = admitted(7 + MIN_RESTORE_GAIN - 1)
    assert (short.n_past, short.n_stored) == (7, 0)
    enough = admitted(7 + MIN_RESTORE_GAIN)
    assert (enough.n_past, enough.n_stored) == (7, 7 + MIN_RESTORE_GAIN)


def test_waiting_requests_expire_after_the_deadline() -> None:
    sched = make(n_slots=1, wait=5.0)
    running, old, young = seq(1, [1], 0.0), seq(2, [2], 1.0), seq(3, [3], 4.0)
    for s in (running, old, young):
        sched.add(s)
    assert sched.schedule(2.0).expired == []
    step = sched.schedule(6.5)
    assert step.expired == [old] and list(sched.waiting) == [young]
    assert running.key in sched.running


def test_abort_is_idempotent_for_waiting_running_and_unknown() -> None:
    sched = make(n_slots=1)
    a, b = seq(1, [1, 2]), seq(2, [3])
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert sched.abort(2) is b and not sched.waiting
    assert sched.abort(2) is None
    assert sched.abort(1) is a and not sched.running
    assert sched.abort(1) is None and sched.abort(99) is None
    # An aborted sequence leaves what it had decoded in the cache.
    assert sched.slots[0].cached == [1, 2] and not sched.slots[0].busy


def test_finish_is_idempotent_and_can_drop_the_cache() -> None:
    sched = make(n_slots=1)
    a = seq(1, [1, 2])
    sched.add(a)
    run_step(sched)
    sched.finish(a, keep_cache=False)
    sched.finish(a)
    assert sched.slots[0].cached == [] and not sched.has_work


def test_forget_prefix_restarts_the_sequence() -> None:
    sched = make(n_slots=1)
    a = seq(1, [1, 2, 3])
    sched.add(a)
    run_step(sched)
    sched.finish(a)
    b = seq(2, [1, 2, 3, 4])
    sched.add(b)
    sched.schedule(0.0)
    assert b.n_cached == 3
    sched.forget_prefix(b)
    assert (b.n_past, b.n_cached, sched.cached_prompt_tokens) == (0, 0, 0)


def test_evict_idle_and_drain() -> None:
    sched = make(n_slots=2)
    a, b, c = seq(1, [1, 2]), seq(2, [3, 4]), seq(3, [5])
    for s in (a, b, c):
        sched.add(s)
    run_step(sched)
    sched.finish(a)
    assert sched.evict_idle() == [a.slot]
    assert sched.evict_idle() == []
    assert sched.drain() == [b, c]
    assert not sched.has_work and sched.stats().running == 0


def test_stats_count_generated_tokens() -> None:
    sched = make(n_slots=2)
    sched.add(seq(1, [1]))
    sched.add(seq(2, [2]))
    sched.add(seq(3, [3]))
    for _ in range(3):
        run_step(sched)
    stats = sched.stats()
    assert (stats.running, stats.waiting, stats.generated_tokens) == (2, 1, 6)


def test_empty_prompt_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        make().add(seq(1, []))


def test_admission_wait_idle() -> None:
    gate = Admission(4)
    assert gate.wait_idle(0.0)
    gate.enter()
    assert not gate.wait_idle(0.01)
    threading.Timer(0.05, gate.leave).start()
    assert gate.wait_idle(5.0)


# -- a KV pool shared by the slots ----------------------------------------------------------------


def pooled(n_slots: int, cells: int, *, max_seq: int | None = None) -> Scheduler[None]:
    return Scheduler(
        n_slots=n_slots,
        max_wait_seconds=10.0,
        prefill_chunk=64,
        pool_cells=cells,
        max_seq_cells=max_seq or cells,
    )


def ask(key: int, prompt: list[int], max_tokens: int, arrival: float = 0.0) -> Seq:
    return SeqState(key, list(prompt), arrival, None, max_tokens=max_tokens)


def test_a_request_waits_until_the_pool_holds_its_prompt_and_max_tokens() -> None:
    sched = pooled(n_slots=3, cells=20)
    a, b, c = ask(1, [1] * 5, 5), ask(2, [2] * 5, 5), ask(3, [3] * 3, 2)
    for s in (a, b, c):
        sched.add(s)
    step = run_step(sched)
    # A slot is idle, but a and b reserved all 20 cells.
    assert step.admitted == [a, b] and list(sched.waiting) == [c]
    assert sched.stats().kv_cells_reserved == 20
    sched.finish(b, keep_cache=False)
    assert run_step(sched).admitted == [c] and c.evicted == []
    stats = sched.stats()
    assert (stats.kv_pool_cells, stats.kv_cells_reserved, stats.kv_cells_cached) == (20, 15, 0)


def test_idle_cached_prefixes_are_evicted_least_recently_used_first() -> None:
    sched = pooled(n_slots=4, cells=16)
    sched.slots[0].cached, sched.slots[0].last_used = [1, 1, 1, 1], 2
    sched.slots[1].cached, sched.slots[1].last_used = [2, 2, 2, 2], 1
    sched.slots[2].cached, sched.slots[2].last_used = [3, 3, 3, 3], 3
    # Slot 3 is empty: the new request takes it, and 10 cells need two of the idle prefixes
    # gone, the least recently used first.
    new = ask(1, [9] * 6, 4)
    sched.add(new)
    run_step(sched)
    assert new.slot == 3
    assert new.evicted == [(1, [2, 2, 2, 2]), (0, [1, 1, 1, 1])]
    assert [slot.cached for slot in sched.slots[:3]] == [[], [], [3, 3, 3, 3]]
    assert sched.stats().kv_cells_cached == 4


def test_the_reused_prefix_counts_as_already_held() -> None:
    sched = pooled(n_slots=3, cells=14)
    history = [5, 6, 7, 8, 9, 10]
    sched.slots[0].cached, sched.slots[0].last_used = list(history), 1
    other = ask(1, [1, 2], 2)  # 4 cells, in an empty slot
    sched.add(other)
    run_step(sched)
    assert other.slot != 0 and other.evicted == []
    # The next turn's 10 cells include the 6 its slot caches: 4 + 10 fit in 14, nothing goes.
    turn = ask(2, [*history, 11], 3)
    sched.add(turn)
    run_step(sched)
    assert turn.slot == 0 and turn.n_cached == 6 and turn.evicted == []
    sched.finish(turn)
    sched.slots[0].cached = list(history)
    # An unrelated prompt of as many cells takes the empty slot and needs the history evicted.
    unrelated = ask(3, [4] * 7, 3)
    sched.add(unrelated)
    run_step(sched)
    assert unrelated.slot == 2 and unrelated.evicted == [(0, history)]


def test_a_long_request_is_not_overtaken_by_shorter_ones() -> None:
    sched = pooled(n_slots=4, cells=12)
    running = ask(1, [1] * 4, 4)  # 8 cells
    sched.add(running)
    run_step(sched)
    long, short = ask(2, [2] * 6, 4), ask(3, [3], 1)  # 10 cells, 2 cells
    sched.add(long)
    sched.add(short)
    # The short one would fit beside the running one, but it arrived after the long one.
    assert run_step(sched).admitted == [] and list(sched.waiting) == [long, short]
    sched.finish(running)
    # The running sequence's cache is evicted for the long one; then the short one fits too.
    assert run_step(sched).admitted == [long, short]
    assert long.evicted == [(running.slot, running.tokens[: running.n_past])]


def test_a_reservation_is_capped_at_the_context() -> None:
    sched = pooled(n_slots=2, cells=10, max_seq=6)
    a, b = ask(1, [1] * 3, 100), ask(2, [2] * 3, 100)
    sched.add(a)
    sched.add(b)
    # A sequence ends at the context's end whatever max_tokens says: 6 cells each, not 103.
    assert (a.cells, b.cells) == (6, 6)
    unbounded = seq(3, [3])  # no max_tokens: it may grow to the context's end
    sched.add(unbounded)
    assert unbounded.cells == 6
    assert run_step(sched).admitted == [a]
    with pytest.raises(ValueError, match="at least one sequence"):
        pooled(n_slots=2, cells=5, max_seq=6)


def test_a_busy_pool_never_holds_more_than_its_cells_and_everyone_finishes() -> None:
    rng = random.Random(7)
    pool, context = 64, 32
    sched = pooled(n_slots=4, cells=pool, max_seq=context)
    conversations = [[rng.randrange(4)] * 12 for _ in range(6)]
    pending: list[Seq] = []
    for key in range(1, 81):
        history = conversations[key % len(conversations)]
        prompt = [*history, 50 + key][-(context - 8) :]
        pending.append(ask(key, prompt, rng.randint(4, 12), arrival=float(key)))
    done: list[Seq] = []
    waited_for_cells = 0
    for _ in range(10_000):
        while pending and rng.random() < 0.4:
            sched.add(pending.pop(0))
        step = run_step(sched, now=0.0)
        for s in step.admitted:
            assert s.cells <= context
        reserved = sum(s.cells for s in sched.running.values())
        cached = sum(len(slot.cached) for slot in sched.slots if not slot.busy)
        assert sum(s.n_past for s in sched.running.values()) <= reserved
        assert reserved + cached <= pool
        stats = sched.stats()
        assert (stats.kv_cells_reserved, stats.kv_cells_cached) == (reserved, cached)
        if sched.waiting and len(sched.running) < len(sched.slots):
            waited_for_cells += 1
        for s in list(sched.running.values()):
            if s.n_generated >= s.max_tokens:
                sched.finish(s)
                conversations[s.key % len(conversations)] = s.tokens[: s.n_past]
                done.append(s)
        if not pending and not sched.has_work:
            break
    assert sorted(s.key for s in done) == list(range(1, 81))
    assert waited_for_cells > 0, "the pool, not the slots, should have held requests back"
