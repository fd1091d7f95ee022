from __future__ import annotations

from qfserve.chat.segmenter import Segmenter


def feed(segmenter: Segmenter, pieces: list[str]) -> list[str]:
    out = [s.text for p in pieces for s in segmenter.push(p, 1)]
    rest = segmenter.flush()
    return [*out, rest.text] if rest.text else out


def test_cuts_after_sentence_ends_once_the_next_text_arrives() -> None:
    segments = feed(
        Segmenter(min_chars=4, max_tokens=64), ["Hello there. ", "How are", " you? Fine"]
    )
    assert segments == ["Hello there.", " How are you?", " Fine"]


def test_chinese_sentence_ends_and_newlines() -> None:
    segments = feed(
        Segmenter(min_chars=2, max_tokens=64), ["以下是路线推荐：\n\n1. 川藏线。", "很美"]
    )
    assert segments == ["以下是路线推荐：\n\n", "1.", " 川藏线。", "很美"]


def test_short_fragments_are_not_cut() -> None:
    assert feed(Segmenter(min_chars=6, max_tokens=64), ["A. B. Cdefgh. x"]) == [
        "A. B. Cdefgh.",
        " x",
    ]


def test_flushes_at_the_token_limit() -> None:
    segmenter = Segmenter(min_chars=4, max_tokens=3)
    assert [s.text for s in segmenter.push("ab", 2)] == []
    assert [s.text for s in segmenter.push("cd", 1)] == ["abcd"]


def test_token_counts_add_up() -> None:
    segmenter = Segmenter(min_chars=1, max_tokens=64)
    counts = [s.token_count for p in ["a. b", ". c", "!"] for s in segmenter.push(p, 2)]
    counts.append(segmenter.flush().token_count)
    assert sum(counts) == 6
