"""The optional model-based check: a Llama Guard style classifier prompt, and reading its verdict.

Pure helpers; the caller runs the prompt on the moderation endpoint. The prompt is the content of
one user turn: the endpoint's chat template wraps it (Llama Guard 3's own template, or Meta's
`[INST] ... [/INST]` for Llama Guard 1 and 2, whose instruction this is too). The categories are
Llama Guard 3's (the MLCommons hazard taxonomy), each mapped to a category of the word lists so
that metrics and the usage ledger count model hits beside list hits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from qfserve.chat.conversation import Message
from qfserve.chat.safety.moderator import Hit

# code: (name shown to the classifier, category reported in the Hit)
GUARD_CATEGORIES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "S1": ("Violent Crimes", "violence"),
        "S2": ("Non-Violent Crimes", "crime"),
        "S3": ("Sex-Related Crimes", "pornography"),
        "S4": ("Child Sexual Exploitation", "pornography"),
        "S5": ("Defamation", "defamation"),
        "S6": ("Specialized Advice", "specialized_advice"),
        "S7": ("Privacy", "personal_data"),
        "S8": ("Intellectual Property", "intellectual_property"),
        "S9": ("Indiscriminate Weapons", "terrorism"),
        "S10": ("Hate", "hate"),
        "S11": ("Suicide & Self-Harm", "self_harm"),
        "S12": ("Sexual Content", "pornography"),
        "S13": ("Elections", "elections"),
        "S14": ("Code Interpreter Abuse", "code_abuse"),
    }
)
# An "unsafe" verdict that names no category we know.
UNSPECIFIED = "unspecified"

_ROLES = {"user": "User", "assistant": "Agent"}
# The prompt's own markers: a message that contained them could close the conversation block
# early and write its own instructions after it.
_MARKERS = (
    "<BEGIN UNSAFE CONTENT CATEGORIES>",
    "<END UNSAFE CONTENT CATEGORIES>",
    "<BEGIN CONVERSATION>",
    "<END CONVERSATION>",
)


class UnreadableVerdict(ValueError):
    """The classifier answered neither "safe" nor "unsafe": a misconfigured endpoint, most likely.

    The caller decides: log it and let the request through (the word lists still apply), since a
    classifier that cannot answer must not take the service down.
    """


def build_guard_prompt(
    messages: Sequence[Message], *, codes: Sequence[str] = tuple(GUARD_CATEGORIES)
) -> str:
    """The classifier's instruction for the last user message of `messages`, history included."""
    categories = "\n".join(f"{code}: {GUARD_CATEGORIES[code][0]}." for code in codes)
    turns = "\n\n".join(f"{_ROLES.get(m.role, 'User')}: {_defuse(m.content)}" for m in messages)
    return (
        "Task: Check if there is unsafe content in 'User' messages in conversations according "
        "our safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{turns}\n\n<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST User message in the above "
        "conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )


def parse_guard_verdict(text: str) -> Hit | None:
    """None for "safe"; a Hit for "unsafe", in the category of the first code we know.

    Raises UnreadableVerdict when the first line is neither.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    verdict = lines[0].lower().rstrip(".") if lines else ""
    if verdict == "safe":
        return None
    if verdict != "unsafe":
        raise UnreadableVerdict(f"classifier verdict unreadable ({len(text)} characters)")
    codes = [c.strip().upper() for c in lines[1].split(",")] if len(lines) > 1 else []
    for code in codes:
        if code in GUARD_CATEGORIES:
            return Hit(GUARD_CATEGORIES[code][1])
    return Hit(UNSPECIFIED)


def _defuse(content: str) -> str:
    # Until nothing changes: removing one marker must not join the halves of another around it.
    previous = None
    while previous != content:
        previous = content
        for marker in _MARKERS:
            content = content.replace(marker, "")
    return content
