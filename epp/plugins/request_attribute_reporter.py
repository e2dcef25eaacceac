"""`request-attribute-reporter` (GIE, llm-d): when a response body ends, compute a number from its
token usage with a CEL expression and hand it to the gateway as dynamic metadata, e.g. a request
cost for the gateway's rate limiting.

Parameters, as upstream: `attributes`, exactly one entry of `key` (`namespace`, default
`envoy.lb`; `name`, required), `expression` (CEL, required; must give a number) and an optional
`condition` (CEL, must give true for the value to be reported). Both see `usage` as upstream binds
it: a JSON object with `prompt_tokens`, `completion_tokens`, `total_tokens` (always present, 0
when the response reported none) and `prompt_token_details.cached_tokens` when the response had
cached tokens; JSON numbers are CEL doubles. The value is truncated to an integer; 0, a failed
evaluation or a non-numeric result reports nothing (failures are logged), as upstream. CEL support
is the subset in epp.requestcontrol.cel: an expression outside it is refused at load.

The EPP sees the response end only when the body passes through it: JSON responses always, SSE
responses in FULL_DUPLEX_STREAMED mode or with `epp serve --read-streamed-responses`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.headers import LB_NAMESPACE
from epp.params.strict import StrictModel
from epp.requestcontrol import ResponseBodyProcessor
from epp.requestcontrol.cel import CelError, Evaluator, compile_expression
from epp.requests import InferenceRequest, Usage
from epp.scheduling.types import SchedulingResult

log = logging.getLogger(__name__)


class AttributeKey(StrictModel):
    namespace: str = ""
    name: str = Field(min_length=1)


class Attribute(StrictModel):
    key: AttributeKey
    expression: str = Field(min_length=1)
    condition: str = ""

    @field_validator("expression", "condition")
    @classmethod
    def _compiles(cls, text: str) -> str:
        if text:
            try:
                compile_expression(text)
            except CelError as exc:
                raise ValueError(f"CEL: {exc}") from None
        return text


class ReporterParams(PluginParams):
    attributes: list[Attribute] = Field(min_length=1, max_length=1)


@register
class RequestAttributeReporter(Plugin, ResponseBodyProcessor):
    type_name = "request-attribute-reporter"
    Params = ReporterParams

    def __init__(self, name: str, params: ReporterParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        attribute = params.attributes[0]
        self.namespace = attribute.key.namespace or LB_NAMESPACE
        self.key = attribute.key.name
        self.expression_text = attribute.expression
        self.expression: Evaluator = compile_expression(attribute.expression)
        self.condition: Evaluator | None = (
            compile_expression(attribute.condition) if attribute.condition else None
        )

    def response_body_done(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> Mapping[str, Mapping[str, Any]]:
        env = {"usage": usage_object(usage)}
        try:
            if self.condition is not None and self.condition(env) is not True:
                return {}
            value = self.expression(env)
        except CelError as exc:
            log.warning(
                "%s: %r failed for request %s: %s", self.name, self.expression_text, request.request_id, exc
            )
            return {}
        if isinstance(value, bool) or not isinstance(value, int | float):
            log.warning(
                "%s: %r gave a %s, not a number", self.name, self.expression_text, type(value).__name__
            )
            return {}
        if not math.isfinite(value):  # a double divided by zero: int() refuses it (llm-d's Go gives MinInt64)
            log.warning("%s: %r gave a non-finite number (%s)", self.name, self.expression_text, value)
            return {}
        number = int(value)
        return {self.namespace: {self.key: float(number)}} if number else {}


def usage_object(usage: Usage | None) -> dict[str, Any]:
    """The usage as upstream's JSON (Go ints marshalled, then read back as protobuf Struct doubles)."""
    usage = usage or Usage()
    data: dict[str, Any] = {
        "prompt_tokens": float(usage.prompt_tokens),
        "completion_tokens": float(usage.completion_tokens),
        "total_tokens": float(usage.total_tokens),
    }
    if usage.cached_tokens:
        data["prompt_token_details"] = {"cached_tokens": float(usage.cached_tokens)}
    return data
