from __future__ import annotations

from qfserve.chat.conversation import Message
from qfserve.chat.template import LLAMA2, ChatTemplate
from qfserve.engines.base import EngineInfo

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def info(template: str | None, name: str = "") -> EngineInfo:
    return EngineInfo("e", "m.gguf", 4096, template, "<s>", "</s>", name)


CONVERSATION = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Bye")]


def test_llama2_format_with_system() -> None:
    template = ChatTemplate(info(None, "Llama-2-7b-chat"))
    assert template.kind == LLAMA2
    assert template.render(CONVERSATION, "Be brief.") == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]"
    )


def test_llama2_name_wins_over_a_generic_template() -> None:
    assert ChatTemplate(info(CHATML, "llama-2-13b-chat.Q4")).kind == LLAMA2


def test_gguf_template_is_used() -> None:
    prompt = ChatTemplate(info(CHATML, "SmolLM2")).render(CONVERSATION, "Sys")
    assert prompt.startswith("<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nHi")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_override_selects_llama2() -> None:
    assert ChatTemplate(info(CHATML, "SmolLM2"), override="llama-2").kind == LLAMA2
