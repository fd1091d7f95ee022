"""The bench's looping-answer metric and its report. Pure."""

from __future__ import annotations

from typing import Any

from qfserve.bench import loops
from qfserve.bench.report import loop_lines

FRANCE = (
    "The capital of France is Paris. It lies on the Seine in the north of the country and is "
    "known for the Eiffel Tower, the Louvre, its cafes and its long history as a centre of art, "
    "science and politics in Europe."
)
# What the bundled model did with the README's example: the same sentence until the token cap.
EN_LOOP = "Here are three tips for a road trip. " + "Plan your route before you go. " * 30
SPRING = (
    "春天来了，花儿开了，小鸟在树上唱歌。"
    "阳光照在大地上，农民伯伯开始播种，孩子们在田野里奔跑，放风筝。"
)
ZH_LOOP = "春天来了，" + "我们一起去公园玩吧！" * 30


def test_varied_answers_do_not_loop() -> None:
    assert not loops.loops(FRANCE)
    assert not loops.loops(SPRING)
    assert loops.distinct_share(FRANCE) == 1.0


def test_repeating_answers_loop() -> None:
    assert loops.loops(EN_LOOP)
    assert loops.loops(ZH_LOOP)


def test_chinese_is_counted_by_character_and_english_by_word() -> None:
    assert loops.units("你好，world is big") == ["你", "好", "，", "world", "is", "big"]


def test_short_answers_are_too_short_to_loop() -> None:
    assert loops.distinct_share("yes yes yes yes yes") is None
    assert not loops.loops("ok " * 10)


def test_count_by_language() -> None:
    counted = loops.count([("en", FRANCE), ("en", EN_LOOP), ("zh", ZH_LOOP), ("zh", SPRING)])
    assert counted == {
        "answers": 4,
        "looping": 2,
        "by_lang": {"en": {"answers": 2, "looping": 1}, "zh": {"answers": 2, "looping": 1}},
    }
    assert loops.share(counted) == 0.5
    assert loops.cell(counted) == "2 / 4 (50%)"
    merged = loops.merge([counted, loops.count([("zh", SPRING)])])
    assert merged["answers"] == 5 and merged["by_lang"]["zh"] == {"answers": 3, "looping": 1}


def test_the_report_counts_per_scenario_and_language() -> None:
    load: dict[str, Any] = {
        "peer": "qfserve",
        "concurrency": 8,
        "loops": loops.count([("en", EN_LOOP), ("zh", SPRING)]),
    }
    conversation = {
        "peer": "qfserve",
        "lang": "zh",
        "turns": [{"loops": True}, {"loops": False}, {"loops": None}],
    }
    lines = loop_lines({"load": [load], "conversations": [conversation]})
    assert "| load at 8 | qfserve | 1 / 2 (50%) | 1 / 1 (100%) | 0 / 1 (0%) |" in lines
    assert "| conversation | qfserve | 1 / 2 (50%) | - | 1 / 2 (50%) |" in lines
    assert loop_lines({"load": []}) == []
