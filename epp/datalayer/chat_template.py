"""A model's chat template, rendered as vLLM renders it (through transformers'
`apply_chat_template`), for tokenizing chat requests with a local `tokenizer.json`.

The template comes from the tokenizer directory: `chat_template.jinja` when present (newer
transformers save it there), else `tokenizer_config.json`'s `chat_template` (a string, or a list of
`{name, template}` of which `default` is used). The Jinja environment is transformers': sandboxed
and immutable, `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a
`{% generation %}` block that renders its body, `raise_exception` and `strftime_now` globals, and
a `tojson` filter that is `json.dumps` (non-ASCII kept, no HTML escaping). The variables are
transformers': `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special
tokens (`bos_token`, `eos_token`, ...) and the request's `chat_template_kwargs` (only those the
template reads, as vLLM filters them). Messages are normalised as vLLM does: text parts joined by
newlines unless the template iterates over a message's content, and a tool call's JSON
`arguments` parsed to an object.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jinja2 import Template, TemplateError, meta, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(Exception):
    """The template is missing, does not parse, or raised while rendering."""


class _GenerationBlock(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (assistant-token masks): only
    the body's text matters for the prompt."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _token_text(value: Any) -> Any:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken object."""
    if isinstance(value, dict):
        return value.get("content")
    if isinstance(value, list):
        return [_token_text(v) for v in value]
    return value


def _iterates_content(tree: nodes.Template) -> bool:
    """vLLM's content-format detection: does a `for` loop iterate over a message's `content`?"""
    for loop in tree.find_all(nodes.For):
        target = loop.iter
        while isinstance(target, nodes.Filter) and target.node is not None:
            target = target.node
        if isinstance(target, nodes.Getitem) and isinstance(target.arg, nodes.Const):
            if target.arg.value == "content":
                return True
        elif isinstance(target, nodes.Getattr) and target.attr == "content":
            return True
    return False


class ChatTemplate:
    def __init__(self, source: str, special_tokens: Mapping[str, Any] | None = None) -> None:
        env = _environment()
        try:
            tree = env.parse(source)
            self._template: Template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"the chat template does not parse: {exc}") from None
        self.variables = meta.find_undeclared_variables(tree)
        self.openai_content = _iterates_content(tree)
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}

    @classmethod
    def from_directory(cls, directory: str) -> ChatTemplate:
        """The template of the tokenizer in `directory`; ChatTemplateError when it has none."""
        config: dict[str, Any] = {}
        config_path = os.path.join(directory, CONFIG_FILE)
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                loaded = json.load(f)
            if isinstance(loaded, dict):
                config = loaded
        special = {name: _token_text(config.get(name)) for name in SPECIAL_TOKENS}
        template_path = os.path.join(directory, TEMPLATE_FILE)
        if os.path.isfile(template_path):
            with open(template_path, encoding="utf-8") as f:
                return cls(f.read(), special)
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if not isinstance(source, str) or not source:
            raise ChatTemplateError(f"no chat template in {directory} ({TEMPLATE_FILE} or {CONFIG_FILE})")
        return cls(source, special)

    def render(self, body: Mapping[str, Any]) -> str:
        """The prompt text of an OpenAI chat completions request body."""
        messages = [self._message(m) for m in body.get("messages") or [] if isinstance(m, dict)]
        add_generation_prompt = bool(body.get("add_generation_prompt", True))
        continue_final = bool(body.get("continue_final_message", False))
        if continue_final and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt are exclusive")
        kwargs = body.get("chat_template_kwargs")
        extra = {k: v for k, v in kwargs.items() if k in self.variables} if isinstance(kwargs, dict) else {}
        if body.get("reasoning_effort") is not None and "reasoning_effort" in self.variables:
            extra["reasoning_effort"] = body["reasoning_effort"]  # vLLM passes it over the kwargs
        variables = {
            **self.special_tokens,
            **extra,
            "messages": messages,
            "tools": body.get("tools") or None,
            "documents": body.get("documents") or None,
            "add_generation_prompt": add_generation_prompt,
        }
        if continue_final:
            _tag_final(messages)
        try:
            rendered = self._template.render(**variables)
        except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ChatTemplateError(f"the chat template raised: {exc}") from None
        if continue_final:
            if CONTINUE_TAG.strip() not in rendered:
                raise ChatTemplateError("the final message does not appear in the rendered chat")
            at = rendered.rindex(CONTINUE_TAG.strip())
            rendered = (
                rendered[:at]
                if rendered[at : at + len(CONTINUE_TAG)] == CONTINUE_TAG
                else rendered[:at].rstrip()
            )
        return rendered

    def _message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """vLLM's conversation message, then transformers' normalisation (None-valued keys dropped,
        reasoning copied to `reasoning_content` and `thinking`)."""
        out = {k: v for k, v in message.items() if v is not None}
        content = message.get("content")
        if content is None:
            content = []
        if isinstance(content, str) and self.openai_content:
            content = [{"type": "text", "text": content}]
        elif isinstance(content, list) and self.openai_content:
            content = [dict(part) if isinstance(part, dict) else part for part in content]
        elif isinstance(content, list):
            content = "\n".join(_texts(content))
        out["content"] = content
        calls = out.get("tool_calls")
        if isinstance(calls, list):
            out["tool_calls"] = [_parsed_call(c) for c in calls]
        reasoning = next((out[k] for k in REASONING_FIELDS if k in out), None)
        if reasoning is not None:
            out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
        return out


def _texts(parts: list[Any]) -> list[str]:
    return [str(p.get("text", "")) for p in parts if isinstance(p, dict) and p.get("type") == "text"]


def _parsed_call(call: Any) -> Any:
    """vLLM hands templates a tool call's `arguments` as an object, not the JSON text."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    if isinstance(function.get("arguments"), str):
        with contextlib.suppress(ValueError):  # not JSON: the template gets the text
            function["arguments"] = json.loads(function["arguments"])
    return {**call, "function": function}


def _tag_final(messages: list[dict[str, Any]]) -> None:
    """transformers' continue_final_message: mark the end of the final message's (last) text so
    the rendering can be cut there."""
    if not messages:
        raise ChatTemplateError("continue_final_message with no messages")
    content = messages[-1].get("content")
    if isinstance(content, str):
        messages[-1]["content"] = content + CONTINUE_TAG
        return
    for part in reversed(content if isinstance(content, list) else []):
        if isinstance(part, dict) and "text" in part:
            part["text"] = str(part["text"]) + CONTINUE_TAG
            return
    raise ChatTemplateError("continue_final_message: the final message has no text")
