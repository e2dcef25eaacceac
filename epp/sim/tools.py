"""Forced tool calls in chat completions: `tool_choice` naming a function, or `"required"`.

vLLM answers both by guided decoding: the model may only write JSON matching the tool's
`parameters` schema (named), or a list of `{"name", "parameters"}` objects for the given tools
(required), and the server turns that text into `message.tool_calls`. The simulator writes such
text (one call; its arguments from `schema_values`), one token per tokenizer piece, so the calls a
client gets, the tokens streamed and the usage all come from the same text. `"auto"` (and no
`tool_choice` beside `tools`) is answered as plain text, as a vLLM whose model chose no tool;
`"none"` as plain text too.

Requests are checked as vLLM's `ChatCompletionRequest.check_tool_usage` checks them, in its words.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from epp.sim.errors import ApiError
from epp.sim.schema_values import schema_text
from epp.sim.tokens import WORD_CHUNK, token_pieces

MAX_CALL_CHARS = 256 * 1024
"""The most text the forced calls of one request are drawn to, shared by its sequences (`n`): a
schema with no short value (`minItems: 1000000000`) is written this far, not whole, and the call
ends there with finish_reason `length`. Drawing runs on the event loop (about 0.2 s for this)."""
MIN_CALL_CHARS = 512
"""What each sequence may draw however many share `MAX_CALL_CHARS`, enough for most tools'
arguments: a request of `n` = 1000 (the waiting queue's default size) draws 512 KiB at most."""
_TOKEN_CHARS = WORD_CHUNK + 1
"""The longest token but a run of spaces: `limit` tokens of text are within `limit` times this."""
_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


@dataclass(frozen=True, slots=True)
class ForcedTools:
    """A request's forced tool choice and the tools it may call: name -> parameters schema."""

    mode: Literal["named", "required"]
    tools: dict[str, Any]

    def plan(self, seed: int, limit: int, sequences: int = 1) -> ToolCallPlan:
        """The call one sequence writes: the named tool, or under `required` one of the tools.
        `limit`: the sequence's `max_tokens`; text past it is not written (`ToolCallPlan.whole`),
        nor past its share of `MAX_CALL_CHARS` among the request's `sequences`."""
        names = list(self.tools)
        name = names[0] if self.mode == "named" else names[seed % len(names)]
        parameters = self.tools[name]
        budget = min(limit * _TOKEN_CHARS, max(MAX_CALL_CHARS // sequences, MIN_CALL_CHARS))
        schema = parameters or {"type": "object"}  # none given: no arguments
        arguments, whole = schema_text(schema, seed, budget)
        if self.mode == "named":
            return ToolCallPlan(name, self.mode, arguments, 0, len(arguments), whole)
        head = f'[{{"name": {json.dumps(name, ensure_ascii=False)}, "parameters": '
        text = head + arguments + ("}]" if whole else "")
        return ToolCallPlan(name, self.mode, text, len(head), len(head) + len(arguments), whole)


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    """The text a sequence generates for its forced call, and where its arguments are in it."""

    name: str
    mode: Literal["named", "required"]
    text: str
    start: int  # the arguments' span in `text`
    end: int
    whole: bool  # False: cut at the sequence's `max_tokens` (or its share of `MAX_CALL_CHARS`)

    @property
    def pieces(self) -> list[str]:
        """The text cut into the simulator's tokens (the sequence's generated tokens)."""
        return token_pieces(self.text)

    def arguments(self, start: int, end: int) -> str:
        """The part of the arguments within characters `start`..`end` of the text."""
        return self.text[max(start, self.start) : min(end, self.end)]

    def finish_reason(self, engine: str | None) -> str | None:
        """vLLM's: the engine's reason for a named call (as OpenAI's API), "tool_calls" for a
        required one that ended by itself."""
        return "tool_calls" if self.mode == "required" and engine == "stop" else engine


def tool_call_id() -> str:
    """vLLM's random tool call id."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def message_tool_calls(plan: ToolCallPlan, generated: int) -> list[dict[str, Any]]:
    """`message.tool_calls` once `generated` characters of the plan's text are out. Named: one
    call, its arguments as far as they were written (vLLM passes the text on as it is). Required:
    vLLM reads the text as its list of calls and answers none when that list does not parse, as a
    list cut short does not."""
    if plan.mode == "required" and (generated < len(plan.text) or not plan.whole):
        return []
    call = {"name": plan.name, "arguments": plan.arguments(0, generated)}
    return [{"id": tool_call_id(), "type": "function", "function": call}]


def parse_tool_choice(body: dict[str, Any]) -> ForcedTools | None:
    """The forced choice of a chat request, or None (no tools, "none", "auto"); vLLM's 400s."""
    tools = body.get("tools")
    if tools == []:
        raise ApiError(
            400,
            "`tools` must not be an empty array. "
            "Either provide at least one tool or omit the field entirely.",
            "tools",
        )
    declared = _declared(tools)
    choice = body.get("tool_choice")
    if choice is None or choice == "none":
        return None
    if tools is None:
        raise ApiError(400, "When using `tool_choice`, `tools` must be set.", "tool_choice")
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise ApiError(
            400,
            f'Invalid value for `tool_choice`: {choice}! Only named tools, "none", "auto" or "required" '
            "are supported.",
            "tool_choice",
        )
    if choice == "auto":
        return None
    if choice == "required":
        return ForcedTools("required", declared)
    name = _named(choice, declared)
    return ForcedTools("named", {name: declared[name]})


def _named(choice: dict[str, Any], declared: dict[str, Any]) -> str:
    function = choice.get("function")
    if not isinstance(function, dict):
        message = f"Invalid value for `function`: `{function}` in `tool_choice`! {_USAGE}"
        raise ApiError(400, message, "tool_choice.function")
    if "name" not in function:
        message = f"Expected field `name` in `function` in `tool_choice`! {_USAGE}"
        raise ApiError(400, message, "tool_choice.function.name")
    name = function["name"]
    if not isinstance(name, str) or not name:
        message = f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_USAGE}"
        raise ApiError(400, message, "tool_choice.function.name")
    if name not in declared:
        message = "The tool specified in `tool_choice` does not match any of the specified `tools`"
        raise ApiError(400, message, "tool_choice")
    if choice.get("type", "function") != "function":
        raise ApiError(400, "a named `tool_choice` must have type 'function'", "tool_choice.type")
    return name


def _declared(tools: Any) -> dict[str, Any]:
    """Function name -> parameters schema (None: none given) of `tools`, checked as vLLM's model
    types them: function tools, each a string `name` and an object (or null) `parameters`."""
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise ApiError(400, "'tools' must be a list of function tools", "tools")
    declared: dict[str, Any] = {}
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("parameters", {}), dict | None)
        ):
            raise ApiError(
                400,
                f'\'tools[{index}]\' must be {{"type": "function", "function": {{"name": <string>, '
                '"parameters": <object>}}',
                "tools",
            )
        declared.setdefault(function["name"], function.get("parameters"))
    return declared
