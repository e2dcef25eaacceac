"""`passthrough-parser` (GIE, llm-d): route without reading the body. The request has no model, no
prompt and no token estimate; the body is forwarded unchanged. Scheduling falls back to what does
not need the body (queue, KV-cache, in-flight, session and label plugins); prefix-cache plugins
see an empty prompt and score 0 everywhere; every ready endpoint is a candidate whatever models it
lists. The objective header still gives the request its priority, and in-flight load is released
when the response ends, as for any request. Claims no path: with several parsers
(llm-d router's `requestHandler.parsers`) it is the fallback for paths no other parser claims."""

from __future__ import annotations

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser
from epp.requests import ApiKind, InferenceRequest


@register
class PassthroughParser(Plugin, RequestParser):
    type_name = "passthrough-parser"

    def parse(self, raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
        return InferenceRequest(
            request_id=request_id,
            api=ApiKind.OTHER,
            path=path,
            model="",
            headers=headers,
            body_size=len(raw),
        )
