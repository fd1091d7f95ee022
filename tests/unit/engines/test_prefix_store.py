"""The prefix cache's RAM and disk tiers without a model: made-up token lists and state bytes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from qfserve.engines.prefix_store import (
    BLOCK,
    SUFFIX,
    TEMP_PREFIX,
    TOKEN_BYTES,
    DiskTier,
    PrefixCache,
    PrefixIndex,
    RamTier,
    encode_identity,
    entry_size,
    file_size,
    identity_directory,
)
from tests.waiting import wait_until

IDENTITY = {"model": {"size": 1, "sha256": "ab"}, "type_k": 1, "type_v": 1, "n_ctx": 4096}


def toks(conversation: int, n: int) -> list[int]:
    """A system prompt shared by every conversation, then tokens of its own."""
    shared = list(range(1000, 1020))
    return (shared + [conversation * 10_000 + i for i in range(n)])[:n]


def state(n: int, fill: int = 7) -> bytearray:
    return bytearray([fill % 256]) * n


# -- the index ----------------------------------------------------------------------------------


def test_index_finds_the_longest_shared_prefix_exactly() -> None:
    from array import array

    index: PrefixIndex[str] = PrefixIndex()
    a, b = toks(1, 100), toks(2, 100)
    index.add("a", array("i", a))
    index.add("b", array("i", b))
    assert index.longest([*a[:70], 5, 5, 5]) == ("a", 70)
    assert index.longest([*a, 1, 2]) == ("a", 100)
    # Sharing only the 20-token opening: one whole block in common, found at that length.
    assert index.longest(toks(3, 60))[1] == 20
    # Less than a block in common: nothing.
    assert index.longest(a[: BLOCK - 1] + [9] * 40) == (None, 0)
    index.remove("a")
    assert index.longest(a)[0] in {"b"}


def test_index_lists_the_entries_a_longer_list_contains() -> None:
    from array import array

    index: PrefixIndex[str] = PrefixIndex()
    long = toks(1, 90)
    index.add("head", array("i", long[:40]))
    index.add("other", array("i", toks(2, 40)))
    index.add("whole", array("i", long))
    assert sorted(index.prefixes_of(long)) == ["head", "whole"]
    assert index.prefixes_of(long[:39]) == []


# -- RAM ----------------------------------------------------------------------------------------


def test_ram_bytes_are_counted_exactly_and_never_pass_the_budget() -> None:
    per_entry = entry_size(64, 1000)
    ram = RamTier(budget=3 * per_entry + 10)
    for conversation in range(10):
        kept, _ = ram.put(toks(conversation, 64), state(1000))
        assert kept
        assert ram.bytes <= ram.budget
        assert ram.bytes == len(ram) * per_entry
    assert len(ram) == 3
    assert ram.evictions == 7
    assert per_entry == 64 * TOKEN_BYTES + 1000


def test_a_full_ram_tier_evicts_the_least_recently_used() -> None:
    ram = RamTier(budget=3 * entry_size(64, 100))
    for conversation in (1, 2, 3):
        ram.put(toks(conversation, 64), state(100))
    entry, length = ram.find([*toks(1, 64), 1])
    assert entry is not None and length == 64
    ram.touch(entry)  # conversation 1 is now the most recent: 2 goes first
    _, evicted = ram.put(toks(4, 64), state(100))
    assert [list(e.tokens) for e in evicted] == [toks(2, 64)]
    assert ram.find(toks(2, 64))[1] == 20  # only the shared opening, through another entry
    assert ram.find(toks(1, 64))[1] == 64


def test_an_entry_bigger_than_the_budget_is_not_kept() -> None:
    ram = RamTier(budget=entry_size(64, 100))
    assert ram.put(toks(1, 64), state(100))[0]
    kept, evicted = ram.put(toks(2, 64), state(101))
    assert not kept and not evicted
    assert ram.bytes == entry_size(64, 100) and len(ram) == 1


def test_a_zero_budget_keeps_nothing() -> None:
    ram = RamTier(budget=0)
    assert ram.put(toks(1, 64), state(10)) == (False, [])
    assert ram.bytes == 0 and len(ram) == 0


def test_ram_drops_entries_a_longer_one_contains_and_skips_contained_ones() -> None:
    ram = RamTier(budget=10**6)
    ram.put(toks(1, 40), state(100))
    ram.put(toks(1, 80), state(200))  # the same conversation, a turn later
    assert len(ram) == 1 and ram.bytes == entry_size(80, 200)
    assert ram.put(toks(1, 60), state(150)) == (False, [])
    assert ram.holds(toks(1, 60)) and not ram.holds(toks(2, 60))
    # Shorter than a block: could never be found, never kept.
    assert ram.put(list(range(BLOCK - 1)), state(5)) == (False, [])


# -- disk ---------------------------------------------------------------------------------------


def disk(path: Path, budget: int = 10**7, identity: dict[str, object] | None = None) -> DiskTier:
    tier = DiskTier(path, identity or IDENTITY, budget)
    tier.scan()
    return tier


def files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_disk_entries_are_found_again_after_a_restart(tmp_path: Path) -> None:
    first = disk(tmp_path)
    assert first.write(toks(1, 64), state(1000, 3))
    assert first.write(toks(2, 48), state(500, 4))
    again = disk(tmp_path)
    assert len(again) == 2 and again.bytes == first.bytes
    entry, length = again.find([*toks(1, 64), 1, 2])
    assert entry is not None and length == 64
    assert again.read(entry) == state(1000, 3)


def test_a_foreign_model_or_kv_type_is_never_restored(tmp_path: Path) -> None:
    disk(tmp_path).write(toks(1, 64), state(1000))
    for change in ({"type_k": 8}, {"type_v": 8}, {"model": {"size": 2, "sha256": "ab"}}):
        other = disk(tmp_path, identity={**IDENTITY, **change})
        assert other.find(toks(1, 64)) == (None, 0)
        assert len(other) == 0
    # Each scan discarded what it could not use.
    assert files(tmp_path) == []


def test_each_identity_has_a_directory_of_its_own(tmp_path: Path) -> None:
    mine = identity_directory(tmp_path, IDENTITY)
    assert mine == identity_directory(tmp_path, dict(IDENTITY))
    assert mine != identity_directory(tmp_path, {**IDENTITY, "type_k": 8})


def test_disk_bytes_never_pass_the_budget_and_go_oldest_first(tmp_path: Path) -> None:
    one = file_size(len(encode_identity(IDENTITY)), 64, 1000)
    tier = disk(tmp_path, budget=3 * one)
    for conversation in range(6):
        assert tier.write(toks(conversation, 64), state(1000))
        on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
        assert on_disk == tier.bytes <= tier.budget
    assert len(tier) == 3 and tier.evictions == 3
    assert [tier.find(toks(c, 64))[1] for c in (2, 3, 4, 5)] == [20, 64, 64, 64]
    # Too big for the whole budget: not written at all.
    assert not tier.write(toks(9, 64), state(3 * one))
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= tier.budget


def test_a_smaller_disk_budget_at_restart_evicts_the_least_recently_used(tmp_path: Path) -> None:
    tier = disk(tmp_path)
    for conversation in (1, 2, 3):
        tier.write(toks(conversation, 64), state(100))
    entry, _ = tier.find(toks(1, 64))
    assert entry is not None
    old = time.time() - 100
    for c, age in ((1, 0), (2, 30), (3, 20)):  # 2 is the oldest, 1 the newest
        found, _ = tier.find(toks(c, 64))
        assert found is not None
        os.utime(tmp_path / found.name, (old + 100 - age, old + 100 - age))
    smaller = disk(tmp_path, budget=2 * file_size(len(encode_identity(IDENTITY)), 64, 100))
    assert len(smaller) == 2
    assert smaller.find(toks(2, 64))[1] == 20
    assert smaller.find(toks(1, 64))[1] == 64 and smaller.find(toks(3, 64))[1] == 64


@pytest.mark.parametrize(
    "damage", ["temp", "truncated", "identity", "tokens", "state", "empty", "junk"]
)
def test_a_write_cut_short_or_a_damaged_file_is_discarded_cleanly(
    tmp_path: Path, damage: str
) -> None:
    """What a kill mid-spill can leave (a temporary file) and what a damaged disk can (a short
    or altered file): the next start or read drops it, and the good entry stays."""
    tier = disk(tmp_path)
    tier.write(toks(1, 64), state(1000, 1))
    tier.write(toks(2, 64), state(1000, 2))
    victim = tier.find(toks(2, 64))[0]
    assert victim is not None
    path = tmp_path / victim.name
    raw = path.read_bytes()
    if damage == "temp":
        (tmp_path / f"{TEMP_PREFIX}{victim.name}").write_bytes(raw[: len(raw) // 2])
    elif damage == "truncated":
        path.write_bytes(raw[:-10])
    elif damage in ("identity", "tokens"):
        at = 40 if damage == "identity" else 32 + len(encode_identity(IDENTITY)) + 9
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :])
    elif damage == "state":
        path.write_bytes(raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        (tmp_path / f"junk{SUFFIX}").write_bytes(b"QFKV" + os.urandom(100))

    again = disk(tmp_path)
    found, length = again.find(toks(2, 64))
    if damage in ("temp", "junk"):
        assert length == 64 and found is not None and again.read(found) == state(1000, 2)
    elif damage == "state":
        # Only the state's checksum can tell; it is checked when the state is read.
        assert found is not None and length == 64
        assert again.read(found) is None
        assert again.find(toks(2, 64))[1] == 20
    else:
        assert length == 20
    good, _ = again.find(toks(1, 64))
    assert good is not None and again.read(good) == state(1000, 1)
    assert files(tmp_path) == sorted(again_names(again))
    assert again.bytes == sum(p.stat().st_size for p in tmp_path.iterdir())


def again_names(tier: DiskTier) -> list[str]:
    names = []
    for c in (1, 2):
        entry, length = tier.find(toks(c, 64))
        if entry is not None and length == 64:
            names.append(entry.name)
    return names


def test_a_file_deleted_behind_the_tier_reads_as_missing(tmp_path: Path) -> None:
    tier = disk(tmp_path)
    tier.write(toks(1, 64), state(100))
    entry, _ = tier.find(toks(1, 64))
    assert entry is not None
    (tmp_path / entry.name).unlink()
    assert tier.read(entry) is None
    assert len(tier) == 0 and tier.bytes == 0


# -- both tiers ---------------------------------------------------------------------------------


def test_ram_evictions_spill_to_disk_and_close_writes_the_rest(tmp_path: Path) -> None:
    one = entry_size(64, 1000)
    cache = PrefixCache(ram_budget=2 * one, disk_root=tmp_path, disk_budget=10**7)
    cache.open(IDENTITY)
    for conversation in range(4):
        cache.save(toks(conversation, 64), state(1000, conversation))
    assert cache.disk is not None
    disk_tier = cache.disk
    wait_until(lambda: len(disk_tier) == 2, 5.0, what="two spilled states")
    assert cache.ram.bytes == 2 * one and len(cache.ram) == 2

    found = cache.fetch([*toks(0, 64), 5], limit=64, better_than=0)
    assert found is not None and found.tier == "disk" and found.length == 64
    assert found.state == state(1000, 0)
    found = cache.fetch([*toks(3, 64), 5], limit=60, better_than=0)
    assert found is not None and found.tier == "ram" and found.length == 60
    assert cache.fetch(toks(3, 64), limit=64, better_than=64) is None
    stats = {s.tier: s for s in cache.stats()}
    assert (stats["ram"].hits, stats["ram"].misses) == (1, 2)
    assert (stats["disk"].hits, stats["disk"].misses) == (1, 1)
    assert stats["ram"].restored_tokens == 60 and stats["disk"].restored_tokens == 64
    assert stats["ram"].evictions == 2 and stats["ram"].entries == 2

    cache.close(also=[(toks(7, 64), state(1000, 7))])
    restarted = PrefixCache(ram_budget=2 * one, disk_root=tmp_path, disk_budget=10**7)
    restarted.open(IDENTITY)
    assert restarted.disk is not None and len(restarted.disk) == 5
    found = restarted.fetch(toks(7, 64), limit=64, better_than=0)
    assert found is not None and found.state == state(1000, 7)
    restarted.close()


def test_without_ram_states_go_straight_to_disk(tmp_path: Path) -> None:
    cache = PrefixCache(ram_budget=0, disk_root=tmp_path, disk_budget=10**7)
    assert cache.enabled
    cache.open(IDENTITY)
    cache.save(toks(1, 64), state(100))
    assert cache.ram.bytes == 0
    assert cache.disk is not None
    disk_tier = cache.disk
    wait_until(lambda: len(disk_tier) == 1, 5.0, what="the state on disk")
    cache.close()


def test_both_tiers_off() -> None:
    cache = PrefixCache(ram_budget=0, disk_root=None, disk_budget=10**7)
    assert not cache.enabled
    assert not PrefixCache(ram_budget=0, disk_root=Path("/x"), disk_budget=0).enabled


def test_close_keeps_the_most_recent_states_that_fit_the_disk(tmp_path: Path) -> None:
    one = file_size(len(encode_identity(IDENTITY)), 64, 1000)
    cache = PrefixCache(ram_budget=10**7, disk_root=tmp_path, disk_budget=2 * one)
    cache.open(IDENTITY)
    for conversation in (1, 2, 3):
        cache.save(toks(conversation, 64), state(1000))
    cache.close(also=[(toks(4, 64), state(1000))])  # a slot's state: the most recent
    restarted = PrefixCache(ram_budget=10**7, disk_root=tmp_path, disk_budget=2 * one)
    restarted.open(IDENTITY)
    assert restarted.disk is not None
    held = {c for c in (1, 2, 3, 4) if restarted.disk.find(toks(c, 64))[1] == 64}
    assert held == {3, 4}
    restarted.close()


KILLED_WRITER = """
import sys
from pathlib import Path
from qfserve.engines.prefix_store import DiskTier
tier = DiskTier(Path(sys.argv[1]), {identity!r}, 10**9)
tier.scan()
n = 0
while True:
    n += 1
    tokens = [1000 + i for i in range(20)] + [n * 1000 + i for i in range(44)]
    tier.write(tokens, bytearray(4 << 20))
"""


def test_a_writer_killed_mid_spill_leaves_a_directory_the_next_start_reads(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    script = KILLED_WRITER.format(identity=IDENTITY)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env)
    try:
        # Killed while a file is being written, as far as timing allows: once a few are done and
        # a temporary one is on its way.
        wait_until(
            lambda: (
                len([p for p in tmp_path.iterdir() if not p.name.startswith(TEMP_PREFIX)]) >= 3
                and any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())
            ),
            30.0,
            interval=0.001,
            what="a spill in progress",
        )
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    tier = disk(tmp_path, budget=10**9)
    assert len(tier) >= 3
    assert not any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())
    assert tier.bytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    for path in tmp_path.iterdir():
        entry = tier._entries[path.name]
        assert tier.read(entry) == bytearray(4 << 20)


def test_a_discarded_state_leaves_its_tier_and_counts_as_a_miss(tmp_path: Path) -> None:
    cache = PrefixCache(ram_budget=entry_size(64, 100), disk_root=tmp_path, disk_budget=10**7)
    cache.open(IDENTITY)
    cache.save(toks(1, 64), state(100))
    cache.save(toks(2, 64), state(100))  # pushes 1 to disk
    assert cache.disk is not None
    disk_tier = cache.disk
    wait_until(lambda: len(disk_tier) == 1, 5.0, what="the spilled state")
    for conversation, tier in ((2, "ram"), (1, "disk")):
        found = cache.fetch(toks(conversation, 64), limit=64, better_than=0)
        assert found is not None and found.tier == tier
        cache.discard(found)
        assert cache.fetch(toks(conversation, 64), limit=64, better_than=20) is None
    assert list(tmp_path.rglob(f"*{SUFFIX}")) == []
    cache.missed()
    stats = {s.tier: s for s in cache.stats()}
    assert (stats["ram"].hits, stats["ram"].restored_tokens) == (0, 0)
    assert (stats["disk"].hits, stats["disk"].restored_tokens) == (0, 0)
    assert (stats["ram"].misses, stats["disk"].misses) == (5, 4)
    assert stats["ram"].entries == stats["disk"].entries == 0
    cache.close()
