"""`vllmhttp-parser` (llm-d): vLLM's native token-in generate API (`/inference/v1/generate`).

As llm-d's: claims the path suffix `inference/v1/generate` (any other path: 400 `unsupported
path`); the body must be a JSON object with a non-empty `token_ids` list (400 `invalid generate
request: must have non-empty token_ids field`); `model` (when a string), `stream: true` and
`sampling_params.max_tokens` are read. The prompt is its token ids (exact prompt length; the
approximate prefix index, which hashes text, sees no text). Responses are read as OpenAI's."""

from __future__ import annotations

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser
from epp.requests import ApiKind, ErrorCode, InferenceRequest, RequestError
from epp.requests.parser import decode_body
from epp.requests.tokenids import are_ints

GENERATE_SUFFIX = "inference/v1/generate"


@register
class VllmHTTPParser(Plugin, RequestParser):
    type_name = "vllmhttp-parser"
    paths = (GENERATE_SUFFIX,)

    def parse(self, raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
        clean = path.split("?", 1)[0].rstrip("/")
        if not clean.endswith(GENERATE_SUFFIX):
            raise RequestError(ErrorCode.BAD_REQUEST, f"unsupported path: {clean}")
        body = decode_body(raw)
        token_ids = body.get("token_ids")
        if not isinstance(token_ids, list) or not token_ids or not are_ints(token_ids):
            raise RequestError(
                ErrorCode.BAD_REQUEST, "invalid generate request: must have non-empty token_ids field"
            )
        model = body.get("model")
        sampling = body.get("sampling_params")
        limit = sampling.get("max_tokens") if isinstance(sampling, dict) else None
        return InferenceRequest(
            request_id=request_id,
            api=ApiKind.OTHER,
            path=path,
            model=model if isinstance(model, str) else "",
            headers=headers,
            token_ids=token_ids,
            stream=body.get("stream") is True,
            max_tokens=limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
            body=body,
            body_size=len(raw),
        )
