"""Content safety (API.md section 4): word lists and personal-data patterns, checked on every user
message before generation and on the answer as it streams.

    normalise   folding (width, case, inserted spaces and punctuation), mapped to the raw text
    automaton   a typed wrapper over pyahocorasick
    lists       list files, the shipped default lists, `WordList`
    patterns    ID card, mobile and bank card numbers
    moderator   `Moderator`, `Hit`, `Verdict`, `check_messages`
    stream      `StreamGuard`: the answer, held back only while a term could still complete
    source      `ModeratorSource`: the moderator in force, reloaded when the list files change
    classifier  the optional model-based check: a Llama Guard prompt and its verdict

Pure but for `source`, which stats and reads the list files. A hit carries its category only: the
flagged text is never logged, counted or stored.
"""

from qfserve.chat.safety.classifier import (
    GUARD_CATEGORIES,
    UnreadableVerdict,
    build_guard_prompt,
    parse_guard_verdict,
)
from qfserve.chat.safety.lists import WordList
from qfserve.chat.safety.moderator import REFUSAL, Hit, Moderator, Verdict, check_messages
from qfserve.chat.safety.patterns import PERSONAL_DATA
from qfserve.chat.safety.source import ModeratorSource
from qfserve.chat.safety.stream import StreamGuard

__all__ = [
    "GUARD_CATEGORIES",
    "PERSONAL_DATA",
    "REFUSAL",
    "Hit",
    "Moderator",
    "ModeratorSource",
    "StreamGuard",
    "UnreadableVerdict",
    "Verdict",
    "WordList",
    "build_guard_prompt",
    "check_messages",
    "parse_guard_verdict",
]
