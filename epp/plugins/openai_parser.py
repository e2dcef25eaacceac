"""`openai-parser`: names the built-in OpenAI-API request parser (epp.requests.parser), the only
parser this EPP has, so configs whose `parser` section selects it load unchanged."""

from __future__ import annotations

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser


@register
class OpenAIParser(Plugin, RequestParser):
    type_name = "openai-parser"
