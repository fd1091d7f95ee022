from __future__ import annotations

from qfserve.engines.stops import StopMatcher


def run(stops: tuple[str, ...], pieces: list[bytes]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    text = "".join(matcher.feed(p) for p in pieces)
    return text + matcher.flush(), matcher.stopped


def test_no_stops_passes_everything() -> None:
    assert run((), [b"ab", b"cd"]) == ("abcd", False)


def test_stop_is_cut_with_what_follows() -> None:
    assert run(("END",), [b"hello E", b"N", b"D and more"]) == ("hello ", True)


def test_a_partial_stop_is_held_then_released() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed(b"go ST") == "go "
    assert matcher.feed(b"ART") == "START"
    assert matcher.flush() == ""


def test_multibyte_characters_split_across_tokens() -> None:
    data = "你好".encode()
    assert run((), [data[:2], data[2:4], data[4:]]) == ("你好", False)


def test_chinese_stop_string() -> None:
    assert run(("。",), ["第一句。".encode(), "第二句".encode()]) == ("第一句", True)


def test_a_cut_inside_a_character_drops_its_bytes() -> None:
    data = "好".encode()
    assert run((), [b"ok ", data[:2]]) == ("ok ", False)
