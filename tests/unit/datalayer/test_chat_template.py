"""Chat templates rendered as vLLM (through transformers) renders them, checked on real templates
against renderings produced by transformers itself (tests/unit/datalayer/chat_templates)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from epp.datalayer.chat_template import ChatTemplate, ChatTemplateError

DATA = Path(__file__).parent / "chat_templates"
CASES = json.loads((DATA / "cases.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_real_templates_render_what_transformers_renders(case: dict[str, Any]) -> None:
    template = ChatTemplate.from_directory(str(DATA / case["model"]))
    assert template.render(case["body"]) == case["expected"]


def test_rendering_leaves_the_request_body_untouched() -> None:
    case = next(c for c in CASES if c["name"] == "qwen tools and a tool round trip")
    body = json.loads(json.dumps(case["body"]))
    ChatTemplate.from_directory(str(DATA / "qwen2.5")).render(body)
    assert body == case["body"]


def test_a_template_raising_is_a_chat_template_error() -> None:
    nemo = ChatTemplate.from_directory(str(DATA / "mistral-nemo"))
    with pytest.raises(ChatTemplateError, match="conversation roles must alternate"):
        nemo.render({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})


def test_a_directory_without_a_template_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    with pytest.raises(ChatTemplateError, match="no chat template in"):
        ChatTemplate.from_directory(str(tmp_path))


def test_chat_template_jinja_wins_and_special_tokens_may_be_added_token_objects(tmp_path: Path) -> None:
    config = {"chat_template": "ignored", "bos_token": {"__type": "AddedToken", "content": "<B>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}"
        "{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    )
    template = ChatTemplate.from_directory(str(tmp_path))
    assert template.render({"messages": [{"role": "user", "content": "x"}]}) == "<B>[x]"


def test_named_templates_use_the_default_one(tmp_path: Path) -> None:
    config = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTemplate.from_directory(str(tmp_path)).render({"messages": []}) == "D"


def test_templates_iterating_content_get_openai_parts_and_kwargs_only_they_read() -> None:
    source = (
        "{% for m in messages %}{% for p in m['content'] %}"
        "<{{ p.type }}:{{ p.text }}>{% endfor %}{% endfor %}"
        "{{ flag | default('-') }}{{ other | default('-') }}"
    )
    template = ChatTemplate(source)
    body = {"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"flag": "F", "x": 1}}
    assert template.render(body) == "<text:hi>F-"
    effort = ChatTemplate("{{ reasoning_effort | default('none') }}")
    assert effort.render({"messages": [], "reasoning_effort": "high"}) == "high"
    assert effort.render({"messages": []}) == "none"


def test_sandbox_blocks_unsafe_attribute_access() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError, match="raised"):
        template.render({"messages": []})


def test_tojson_keeps_non_ascii_and_does_not_escape_html() -> None:
    template = ChatTemplate("{{ tools | tojson }}")
    assert template.render({"messages": [], "tools": [{"d": "<Zürich & co>"}]}) == '[{"d": "<Zürich & co>"}]'
