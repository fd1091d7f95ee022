"""The prefix cache's tiers beyond the slots: saved KV states of single sequences, in host RAM and
optionally on disk, found by the longest token prefix they share with a prompt.

An entry is a token list and the state llama.cpp wrote for the one sequence holding exactly those
tokens (`llama_state_seq_get_data_ext`). Restoring it into a slot and dropping the positions past
the shared prefix gives that slot the prompt's first tokens without prefilling them.

- `PrefixIndex` finds entries by chained hashes of `BLOCK`-token blocks: an entry is listed under
  the hash of each of its block-aligned prefixes, so the deepest level of a prompt's chain with any
  entry holds every entry sharing the most blocks with it; the exact shared length is then counted
  on those few. Entries shorter than a block are never stored: they could not be found.
- `RamTier`: LRU under a byte budget. Its bytes are the states' and the token lists' own (4 bytes a
  token), counted exactly; an entry bigger than the budget is not kept. An entry whose tokens are a
  prefix of another's is dropped (the longer one serves every prompt the shorter would).
- `DiskTier`: one file per entry in a directory of its own, LRU by the files' modification times
  (touched on every hit), under its own byte budget counting whole files, temporary ones included.
  Files are written to a temporary name, synced, then renamed. Each begins with a header naming the
  model file and the KV cache's settings (`identity`); a file whose header, length or checksums do
  not match is deleted when the directory is scanned at start or when it is read, never restored.
- `PrefixCache`: both tiers as the engine sees them. Entries leaving RAM (and those too big for it)
  are spilled to disk by a writer thread, so the engine thread never waits for a disk; `close`
  writes what RAM still holds, most recent first, so a restart finds it.

Threads: the engine thread calls everything except `stats()` (any thread); the disk tier has a lock
because the writer thread adds and evicts files while the engine thread looks up and reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import struct
import sys
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from qfserve.engines.base import TierStats

logger = logging.getLogger(__name__)

# Tokens per hashed block: the granularity at which a stored prefix can be found.
BLOCK = 16
# Bytes a stored token costs in the accounting (tokens are kept as 32-bit ints).
TOKEN_BYTES = 4

K = TypeVar("K")


def common_prefix_length(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    n = start
    for x, y in zip(a[start:], b[start:], strict=False):
        if x != y:
            break
        n += 1
    return n


def _as_array(tokens: Sequence[int]) -> array[int]:
    return tokens if isinstance(tokens, array) else array("i", tokens)


def block_hashes(tokens: Sequence[int]) -> list[int]:
    """Hash of each whole block-aligned prefix: element k covers tokens[: (k + 1) * BLOCK]."""
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
        previous = hash((previous, tuple(tokens[start : start + BLOCK])))
        hashes.append(previous)
    return hashes


class PrefixIndex(Generic[K]):
    """Entries (by key) findable by the longest prefix they share with a token list."""

    def __init__(self) -> None:
        self._by_hash: dict[int, set[K]] = {}
        self._hashes: dict[K, list[int]] = {}
        self._tokens: dict[K, array[int]] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, key: K, tokens: array[int]) -> None:
        hashes = block_hashes(tokens)
        self._hashes[key] = hashes
        self._tokens[key] = tokens
        for h in hashes:
            self._by_hash.setdefault(h, set()).add(key)

    def remove(self, key: K) -> None:
        self._tokens.pop(key, None)
        for h in self._hashes.pop(key, ()):
            keys = self._by_hash.get(h)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_hash[h]

    def longest(self, prompt: Sequence[int]) -> tuple[K | None, int]:
        """The entry sharing the longest prefix with `prompt`, and that length (0: none shares a
        whole block)."""
        hashes = block_hashes(prompt)
        # Levels holding an entry form a prefix of the chain: search for the deepest one.
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in self._by_hash:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            return None, 0
        wanted = _as_array(prompt)
        best: K | None = None
        best_length = 0
        shared = lo * BLOCK
        for key in self._by_hash[hashes[lo - 1]]:
            tokens = self._tokens[key]
            # Checked, not trusted: colliding hashes must never hand over another prompt's state.
            if tokens[:shared] != wanted[:shared]:
                continue
            length = common_prefix_length(tokens, wanted, shared)
            if length > best_length:
                best, best_length = key, length
        return best, best_length

    def prefixes_of(self, tokens: Sequence[int]) -> list[K]:
        """Entries whose whole token list is a prefix of `tokens` (or equal to it)."""
        wanted = _as_array(tokens)
        found: list[K] = []
        for level, h in enumerate(block_hashes(tokens), start=1):
            for key in self._by_hash.get(h, ()):
                mine = self._tokens[key]
                if len(mine) // BLOCK == level and mine == wanted[: len(mine)]:
                    found.append(key)
        return found


@dataclass(eq=False, slots=True)
class RamEntry:
    tokens: array[int]
    state: bytearray
    key: int = 0

    @property
    def size(self) -> int:
        return entry_size(len(self.tokens), len(self.state))


def entry_size(n_tokens: int, state_bytes: int) -> int:
    return n_tokens * TOKEN_BYTES + state_bytes


class RamTier:
    """Saved states in host RAM, least recently used first out, never above `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[int, RamEntry] = OrderedDict()
        self._index: PrefixIndex[int] = PrefixIndex()
        self._ids = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[RamEntry]:
        """Most recently used first."""
        return list(reversed(self._entries.values()))

    def find(self, prompt: Sequence[int]) -> tuple[RamEntry | None, int]:
        key, length = self._index.longest(prompt)
        return (self._entries[key], length) if key is not None else (None, 0)

    def touch(self, entry: RamEntry) -> None:
        if self._entries.get(entry.key) is entry:
            self._entries.move_to_end(entry.key)

    def holds(self, tokens: Sequence[int]) -> bool:
        """Some entry starts with all of `tokens` (saving them would add nothing)."""
        entry, length = self.find(tokens)
        if entry is not None and length == len(tokens):
            self.touch(entry)
            return True
        return False

    def put(self, tokens: Sequence[int], state: bytearray) -> tuple[bool, list[RamEntry]]:
        """Keep an entry; (kept, entries evicted to make room). Not kept: bigger than the budget,
        or already held by a longer entry."""
        size = entry_size(len(tokens), len(state))
        if size > self.budget or len(tokens) < BLOCK or self.holds(tokens):
            return False, []
        for key in self._index.prefixes_of(tokens):
            self._drop(key)
        evicted: list[RamEntry] = []
        while self._entries and self.bytes + size > self.budget:
            key = next(iter(self._entries))
            evicted.append(self._entries[key])
            self._drop(key)
            self.evictions += 1
        self._ids += 1
        entry = RamEntry(array("i", tokens), state, self._ids)
        self._entries[self._ids] = entry
        self._index.add(self._ids, entry.tokens)
        self.bytes += size
        return True, evicted

    def remove(self, key: int) -> None:
        if key in self._entries:
            self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self._index.remove(key)
        self.bytes -= entry.size


# File layout: the fixed prefix, the identity as JSON, the tokens (int32, little-endian), the state.
_MAGIC = b"QFKV"
FORMAT_VERSION = 1
# magic, version, identity length, token count, state length, crc32 of identity + tokens,
# crc32 of the state.
_PREFIX = struct.Struct("<4sIIIQII")
SUFFIX = ".qfkv"
TEMP_PREFIX = ".tmp-"


def file_size(identity_bytes: int, n_tokens: int, state_bytes: int) -> int:
    return _PREFIX.size + identity_bytes + n_tokens * TOKEN_BYTES + state_bytes


def encode_identity(identity: Mapping[str, object]) -> bytes:
    return json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()


@dataclass(eq=False, slots=True)
class DiskEntry:
    name: str
    tokens: array[int]
    size: int
    state_offset: int
    state_length: int
    state_crc: int


class DiskTier:
    """Saved states as files in `directory`, never more than `budget` bytes of them."""

    def __init__(self, directory: Path, identity: Mapping[str, object], budget: int) -> None:
        self.directory = directory
        self.budget = budget
        self.bytes = 0
        self.evictions = 0
        self.identity = encode_identity(identity)
        # Least recently used first.
        self._entries: OrderedDict[str, DiskEntry] = OrderedDict()
        self._index: PrefixIndex[str] = PrefixIndex()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def scan(self) -> None:
        """Index the directory's files: temporary ones (a write cut short) and any that do not
        check out are deleted; then the budget is applied, oldest first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, DiskEntry]] = []
        for path in self.directory.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                _unlink(path)
                continue
            if not path.name.endswith(SUFFIX) or not path.is_file():
                continue
            entry = self._read_header(path)
            if entry is None:
                logger.warning("prefix cache: discarding %s (not a state of this model)", path)
                _unlink(path)
                continue
            try:
                found.append((path.stat().st_mtime, entry))
            except OSError:  # gone meanwhile
                continue
        with self._lock:
            for _, entry in sorted(found, key=lambda item: item[0]):
                self._add(entry)
            while self._entries and self.bytes > self.budget:
                self._evict_oldest()

    def find(self, prompt: Sequence[int]) -> tuple[DiskEntry | None, int]:
        with self._lock:
            name, length = self._index.longest(prompt)
            return (self._entries[name], length) if name is not None else (None, 0)

    def holds(self, tokens: Sequence[int]) -> bool:
        entry, length = self.find(tokens)
        return entry is not None and length == len(tokens)

    def read(self, entry: DiskEntry) -> bytearray | None:
        """The entry's state, checked; None (and the file deleted) if it is gone or damaged."""
        path = self.directory / entry.name
        state = bytearray(entry.state_length)
        try:
            with open(path, "rb") as f:
                f.seek(entry.state_offset)
                complete = f.readinto(state) == entry.state_length and not f.read(1)
        except OSError:
            complete = False
        if not complete or zlib.crc32(state) != entry.state_crc:
            logger.warning("prefix cache: discarding %s (damaged)", path)
            with self._lock:
                self._forget(entry.name)
            _unlink(path)
            return None
        with self._lock:
            if entry.name in self._entries:
                self._entries.move_to_end(entry.name)
        # Its age orders the files' eviction after a restart.
        with contextlib.suppress(OSError):
            os.utime(path)
        return state

    def write(self, tokens: Sequence[int], state: bytearray) -> bool:
        """Store an entry (writer thread). False if it is bigger than the budget, shorter than a
        block, already held, or the write failed."""
        size = file_size(len(self.identity), len(tokens), len(state))
        if size > self.budget or len(tokens) < BLOCK or self.holds(tokens):
            return False
        token_bytes = array("i", tokens)
        if token_bytes.itemsize != TOKEN_BYTES:
            raise RuntimeError("32-bit ints expected")
        if sys.byteorder != "little":
            token_bytes.byteswap()
        raw_tokens = token_bytes.tobytes()
        name = hashlib.sha256(raw_tokens).hexdigest()[:32] + SUFFIX
        with self._lock:
            for obsolete in self._index.prefixes_of(tokens):
                self._remove_file(obsolete)
            # Room first, the temporary file included: the directory never holds more.
            while self._entries and self.bytes + size > self.budget:
                self._evict_oldest()
            self.bytes += size
        state_crc = zlib.crc32(state)
        head = _PREFIX.pack(
            _MAGIC,
            FORMAT_VERSION,
            len(self.identity),
            len(tokens),
            len(state),
            zlib.crc32(raw_tokens, zlib.crc32(self.identity)),
            state_crc,
        )
        temp = self.directory / f"{TEMP_PREFIX}{os.getpid()}-{name}"
        final = self.directory / name
        try:
            with open(temp, "wb") as f:
                f.write(head)
                f.write(self.identity)
                f.write(raw_tokens)
                f.write(state)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, final)
            _sync_directory(self.directory)
        except OSError as exc:
            logger.warning("prefix cache: cannot write %s: %s", final, exc)
            _unlink(temp)
            with self._lock:
                self.bytes -= size
            return False
        entry = DiskEntry(
            name=name,
            tokens=array("i", tokens),
            size=size,
            state_offset=size - len(state),
            state_length=len(state),
            state_crc=state_crc,
        )
        with self._lock:
            self.bytes -= size  # counted again by _add
            if name in self._entries:
                self._forget(name)
            self._add(entry)
        return True

    def remove(self, name: str) -> None:
        with self._lock:
            self._remove_file(name)

    def _read_header(self, path: Path) -> DiskEntry | None:
        try:
            with open(path, "rb") as f:
                head = f.read(_PREFIX.size)
                if len(head) != _PREFIX.size:
                    return None
                magic, version, id_len, n_tokens, state_len, meta_crc, state_crc = _PREFIX.unpack(
                    head
                )
                if magic != _MAGIC or version != FORMAT_VERSION or id_len != len(self.identity):
                    return None
                identity = f.read(id_len)
                raw_tokens = f.read(n_tokens * TOKEN_BYTES)
                size = os.fstat(f.fileno()).st_size
        except OSError:
            return None
        if identity != self.identity or len(raw_tokens) != n_tokens * TOKEN_BYTES:
            return None
        if zlib.crc32(raw_tokens, zlib.crc32(identity)) != meta_crc:
            return None
        if size != file_size(id_len, n_tokens, state_len) or n_tokens < BLOCK:
            return None
        tokens = array("i")
        tokens.frombytes(raw_tokens)
        if sys.byteorder != "little":
            tokens.byteswap()
        return DiskEntry(path.name, tokens, size, size - state_len, state_len, state_crc)

    def _add(self, entry: DiskEntry) -> None:
        self._entries[entry.name] = entry
        self._index.add(entry.name, entry.tokens)
        self.bytes += entry.size

    def _forget(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._index.remove(name)
            self.bytes -= entry.size

    def _remove_file(self, name: str) -> None:
        self._forget(name)
        _unlink(self.directory / name)

    def _evict_oldest(self) -> None:
        self._remove_file(next(iter(self._entries)))
        self.evictions += 1


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("prefix cache: cannot delete %s: %s", path, exc)


def _sync_directory(directory: Path) -> None:
    # The rename is durable only once the directory itself is synced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Restorable:
    """A saved state to put into a slot: its first `length` tokens are the prompt's."""

    tier: str
    length: int
    state: bytearray
    # The entry's key in its tier (a RAM entry's number, a disk file's name).
    key: int | str = 0


class PrefixCache:
    """The RAM tier, and the disk tier when it has a directory, as the engine uses them."""

    def __init__(self, *, ram_budget: int, disk_root: Path | None = None, disk_budget: int = 0):
        self.ram = RamTier(ram_budget)
        self.disk: DiskTier | None = None
        self._disk_root = disk_root if disk_budget > 0 else None
        self._disk_budget = disk_budget
        self._hits = {"ram": 0, "disk": 0}
        self._misses = {"ram": 0, "disk": 0}
        self._restored = {"ram": 0, "disk": 0}
        self._spills: queue.SimpleQueue[tuple[array[int], bytearray] | None] = queue.SimpleQueue()
        # States handed to the writer and not yet on disk: bounded, past it spills are dropped.
        self._spilling_bytes = 0
        self._spill_limit = max(ram_budget // 4, 64 << 20)
        self._spill_lock = threading.Lock()
        self._writer: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.ram.budget > 0 or self._disk_root is not None

    def open(self, identity: Mapping[str, object]) -> None:
        """Open the disk tier in the directory of `identity` (the model file and KV settings its
        states belong to) under the root: scan it (at start, before any request), start its
        writer."""
        if self._disk_root is None:
            return
        directory = identity_directory(self._disk_root, identity)
        self.disk = DiskTier(directory, identity, self._disk_budget)
        try:
            self.disk.scan()
        except OSError as exc:
            logger.warning("prefix cache: disk tier off, %s: %s", self.disk.directory, exc)
            self.disk = None
            return
        self._writer = threading.Thread(
            target=self._write_spills, name="qfserve-prefix-spill", daemon=True
        )
        self._writer.start()

    def longest(self, prompt: Sequence[int]) -> int:
        """How many leading tokens of `prompt` some tier holds (no hit or miss counted)."""
        _, in_ram = self.ram.find(prompt)
        in_disk = self.disk.find(prompt)[1] if self.disk is not None else 0
        return max(in_ram, in_disk)

    def fetch(self, prompt: Sequence[int], *, limit: int, better_than: int) -> Restorable | None:
        """The state sharing the longest prefix with `prompt` (at most `limit` of its tokens
        used), if that beats the `better_than` tokens a slot already holds. Counts a hit for the
        tier it comes from, a miss for each tier asked before."""
        ram_entry, ram_length = self.ram.find(prompt)
        disk_entry, disk_length = self.disk.find(prompt) if self.disk else (None, 0)
        ram_length, disk_length = min(ram_length, limit), min(disk_length, limit)
        if ram_entry is not None and ram_length > better_than and ram_length >= disk_length:
            self.ram.touch(ram_entry)
            return self._hit("ram", ram_length, ram_entry.state, ram_entry.key)
        self._misses["ram"] += 1
        if self.disk is None:
            return None
        if disk_entry is not None and disk_length > better_than:
            state = self.disk.read(disk_entry)
            if state is not None:
                return self._hit("disk", disk_length, state, disk_entry.name)
        self._misses["disk"] += 1
        return None

    def missed(self) -> None:
        """An admission no tier could serve better than its slot."""
        self._misses["ram"] += 1
        if self.disk is not None:
            self._misses["disk"] += 1

    def holds(self, tokens: Sequence[int]) -> bool:
        """A tier already has an entry starting with all of `tokens`."""
        return self.ram.holds(tokens) or (self.disk is not None and self.disk.holds(tokens))

    def save(self, tokens: Sequence[int], state: bytearray) -> None:
        if len(tokens) < BLOCK or self.ram.holds(tokens):
            return
        if entry_size(len(tokens), len(state)) > self.ram.budget:
            # Bigger than the RAM budget (or no RAM tier): straight to disk, if any.
            self._spill(array("i", tokens), state)
            return
        _, evicted = self.ram.put(tokens, state)
        for entry in evicted:
            self._spill(entry.tokens, entry.state)

    def stats(self) -> list[TierStats]:
        tiers = [("ram", self.ram.budget, self.ram.bytes, len(self.ram), self.ram.evictions)]
        if self.disk is not None:
            d = self.disk
            tiers.append(("disk", d.budget, d.bytes, len(d), d.evictions))
        return [
            TierStats(
                tier=name,
                budget_bytes=budget,
                bytes=held,
                entries=count,
                hits=self._hits[name],
                misses=self._misses[name],
                evictions=evictions,
                restored_tokens=self._restored[name],
            )
            for name, budget, held, count, evictions in tiers
        ]

    def close(self, also: Iterable[tuple[Sequence[int], bytearray]] = ()) -> None:
        """Write `also` (the slots' states, the most recent) and what RAM holds to disk, and wait
        for the writer. Only the newest that fit the disk budget are written, oldest first, so
        the files' ages keep the order of use. Without a disk tier this only drops RAM."""
        disk = self.disk
        if self._writer is not None and disk is not None:
            newest_first = [(array("i", tokens), state) for tokens, state in also]
            newest_first += [(e.tokens, e.state) for e in self.ram.entries()]
            identity_bytes = len(disk.identity)
            room, chosen = disk.budget, []
            for tokens, state in newest_first:
                room -= file_size(identity_bytes, len(tokens), len(state))
                if room < 0:
                    break
                chosen.append((tokens, state))
            for item in reversed(chosen):
                self._spills.put(item)
            self._spills.put(None)
            self._writer.join()
            self._writer = None
        self.ram = RamTier(self.ram.budget)

    def discard(self, found: Restorable) -> None:
        """Forget a state that llama.cpp would not restore, and take back its hit."""
        self._hits[found.tier] -= 1
        self._restored[found.tier] -= found.length
        self._misses[found.tier] += 1
        if found.tier == "ram" and isinstance(found.key, int):
            self.ram.remove(found.key)
        elif found.tier == "disk" and isinstance(found.key, str) and self.disk is not None:
            self.disk.remove(found.key)

    def _hit(self, tier: str, length: int, state: bytearray, key: int | str) -> Restorable:
        self._hits[tier] += 1
        self._restored[tier] += length
        return Restorable(tier, length, state, key)

    def _spill(self, tokens: array[int], state: bytearray) -> None:
        if self._writer is None:
            return
        with self._spill_lock:
            if self._spilling_bytes and self._spilling_bytes + len(state) > self._spill_limit:
                return  # the disk is behind: this state is lost rather than held in memory
            self._spilling_bytes += len(state)
        self._spills.put((tokens, state))

    def _write_spills(self) -> None:
        disk = self.disk
        assert disk is not None
        while (item := self._spills.get()) is not None:
            tokens, state = item
            try:
                disk.write(tokens, state)
            except Exception:
                logger.exception("prefix cache: spilling a state failed")
            finally:
                with self._spill_lock:
                    self._spilling_bytes = max(0, self._spilling_bytes - len(state))


def model_fingerprint(path: str, *, sample: int = 1 << 20) -> dict[str, object]:
    """What identifies a model file's contents cheaply: its size, modification time, and a hash
    of its first and last `sample` bytes (the GGUF header and the last tensors' data)."""
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(sample))
        if stat.st_size > sample:
            f.seek(max(sample, stat.st_size - sample))
            digest.update(f.read(sample))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def identity_directory(root: Path, identity: Mapping[str, object]) -> Path:
    """The disk tier's own directory under `root`, one per model file and KV settings."""
    return root / hashlib.sha256(encode_identity(identity)).hexdigest()[:16]
