"""`openai-parser` (GIE, llm-d): the OpenAI API bodies (completions, chat completions, responses,
conversations, embeddings) with GIE's validation and error messages (epp.requests.parser). The
default parser when a config names none."""

from __future__ import annotations

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser
from epp.requests import InferenceRequest
from epp.requests.parser import parse_request


@register
class OpenAIParser(Plugin, RequestParser):
    type_name = "openai-parser"
    # The suffixes llm-d router's openai-parser claims among several parsers.
    paths = (
        "chat/completions",
        "completions",
        "embeddings",
        "responses",
        "conversations",
        "chat/completions/render",
        "completions/render",
        "images/generations",
    )

    def parse(self, raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
        return parse_request(raw, path, headers, request_id)
