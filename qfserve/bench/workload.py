"""The bench's fixed workload: `bench/prompts.json`, `bench/conversations.json` and
`bench/structured.json`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The spec's length rule: all message contents together at most 2,000 characters, past which the
# server forgets the oldest rounds (and a prefix cache can no longer match the history).
SPEC_TOTAL_CHARS = 2000
# What a run can measure, in the order it measures them: load at each concurrency level (with
# the baseline at concurrency 1), then the conversations, then structured output, then the
# disconnect.
SCENARIOS = ("load", "baseline", "conversation", "structured", "disconnect")
# Run alone, with its own report: more conversations than slots, played round-robin
# (`many_conversations`), with the defaults below.
MANY_CONVERSATIONS = "many-conversations"
DEFAULT_CONVERSATIONS = 64
DEFAULT_TURNS = 8
# Short answers keep the run short: the scenario is about time to first token, and the history
# grows mostly by the user's questions. 16 tokens is a sentence.
ANSWER_TOKENS = 16
# Its variants, in the order they run and are reported: qfserve with its RAM tier at the default
# budget, with no tier, with a disk tier; llama.cpp's llama-server with its own defaults.
RAM_TIER = "ram"
NO_TIER = "no-tier"
DISK_TIER = "disk"
LLAMA_SERVER_VARIANT = "llama-server"
VARIANTS = (RAM_TIER, NO_TIER, DISK_TIER, LLAMA_SERVER_VARIANT)


# The unmeasured request before a server's first run: not one of the prompts, which would then
# start cached.
WARM_UP = [{"role": "user", "content": "Say hello."}]


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    lang: str
    text: str


def request_messages(prompts: Sequence[Prompt], index: int, tag: str) -> list[dict[str, str]]:
    """Request `index` of a run asks prompt `index` mod len(prompts), marked `[tag index]`: no two
    requests to a server then share more than the chat template's opening. Otherwise a prefix
    cache would answer the second pass over the prompts from memory, which a real single-turn
    workload, with a different question each time, never allows."""
    prompt = prompts[index % len(prompts)]
    return [{"role": "user", "content": f"[{tag}{index}] {prompt.text}"}]


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    lang: str
    turns: tuple[str, ...]
    history_chars: int

    def answer_budget(self) -> int:
        """Characters kept of each answer so that the last turn's messages total `history_chars`."""
        if len(self.turns) < 2:
            return 0
        spare = self.history_chars - sum(len(t) for t in self.turns)
        return max(0, spare // (len(self.turns) - 1))


def default_dir() -> Path:
    """`bench/` of the source checkout (the package is installed editable by `make install`)."""
    return Path(__file__).resolve().parents[2] / "bench"


def _read(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _prompts(path: Path, data: dict[str, Any]) -> list[Prompt]:
    items = data.get("prompts") or []
    prompts = [Prompt(str(p["id"]), str(p.get("lang", "")), str(p["prompt"])) for p in items]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def load_prompts(path: Path) -> list[Prompt]:
    return _prompts(path, _read(path))


def load_conversations(path: Path) -> list[Conversation]:
    data = _read(path)
    default_chars = int(data.get("history_chars", SPEC_TOTAL_CHARS - 100))
    found: list[Conversation] = []
    for c in data.get("conversations") or []:
        chars = int(c.get("history_chars", default_chars))
        # Past the limit the server forgets the oldest rounds, and no prefix cache can match.
        if chars > SPEC_TOTAL_CHARS:
            raise ValueError(f"{path}: {c['id']}: history_chars is above {SPEC_TOTAL_CHARS}")
        found.append(Conversation(str(c["id"]), str(c.get("lang", "")), tuple(c["turns"]), chars))
    return found


@dataclass(frozen=True, slots=True)
class StructuredWorkload:
    """Prompts that ask for the data of one JSON Schema, asked free and constrained to it."""

    name: str
    schema: Mapping[str, Any]
    prompts: tuple[Prompt, ...]

    def response_format(self) -> dict[str, Any]:
        """OpenAI's `response_format` asking for this schema, strictly."""
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.schema, "strict": True},
        }


def load_structured(path: Path) -> StructuredWorkload:
    data = _read(path)
    schema = data.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ValueError(f"{path}: expected a JSON Schema of an object under 'schema'")
    name = str(data.get("name") or "answer")
    return StructuredWorkload(name, schema, tuple(_prompts(path, data)))
