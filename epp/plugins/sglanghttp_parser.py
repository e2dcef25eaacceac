"""`sglanghttp-parser` (llm-d): SGLang's native token-in `/generate` API.

As llm-d's: the path must be `/generate` (else 400 `unsupported path`); the body is a JSON object
whose `input_ids` is a non-empty array of token ids (else 400 `invalid generate request: …`);
`extra_key` (a string, else 400) is the cache salt, `sampling_params.max_new_tokens` the output
limit, `stream: true` a streaming request. There is no model field (every ready endpoint is a
candidate). Usage comes from the response's `meta_info` (`prompt_tokens`, `completion_tokens`,
`cached_tokens`); streamed, from the `data:` event whose `meta_info.finish_reason` is set."""

from __future__ import annotations

from typing import Any

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser
from epp.requests import ApiKind, ErrorCode, InferenceRequest, RequestError, Usage
from epp.requests.parser import decode_body
from epp.requests.tokenids import are_token_ids
from epp.requests.usage import UsageReader


def _bad(message: str) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, message)


@register
class SGLangHTTPParser(Plugin, RequestParser):
    type_name = "sglanghttp-parser"
    paths = ("generate",)

    def parse(self, raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
        clean = path.split("?", 1)[0].strip().rstrip("/")
        if clean not in ("generate", "/generate"):
            raise _bad(f"unsupported path: {clean}")
        body = decode_body(raw)
        ids = body.get("input_ids")
        if ids is None:
            raise _bad("invalid generate request: input_ids must be provided")
        if not isinstance(ids, list) or not are_token_ids(ids, 0, 2**32):
            raise _bad("invalid generate request: input_ids must be an array of uint32 integers")
        if not ids:
            raise _bad("invalid generate request: input_ids cannot be empty")
        salt = body.get("extra_key")
        if salt is not None and not isinstance(salt, str):
            raise _bad("unsupported generate request: extra_key must be a string")
        sampling = body.get("sampling_params")
        limit = sampling.get("max_new_tokens") if isinstance(sampling, dict) else None
        valid_limit = isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0
        return InferenceRequest(
            request_id=request_id,
            api=ApiKind.OTHER,
            path=path,
            model="",
            headers=headers,
            token_ids=ids,
            stream=body.get("stream") is True,
            max_tokens=limit if valid_limit else None,
            cache_salt=salt or "",
            body=body,
            body_size=len(raw),
        )

    def usage_reader(self, streaming: bool) -> UsageReader:
        return SGLangUsageReader(streaming)


class SGLangUsageReader(UsageReader):
    __slots__ = ()
    marker = b'"meta_info"'

    def found(self, document: Any) -> None:
        meta = document.get("meta_info") if isinstance(document, dict) else None
        if not isinstance(meta, dict):
            return
        if self.streaming and meta.get("finish_reason") is None:
            return
        prompt, completion = meta.get("prompt_tokens"), meta.get("completion_tokens")
        if not isinstance(prompt, int) and not isinstance(completion, int):
            return
        p = prompt if isinstance(prompt, int) else 0
        c = completion if isinstance(completion, int) else 0
        cached = meta.get("cached_tokens")
        self.usage = Usage(p, c, cached if isinstance(cached, int) else 0, p + c)
