"""`vllmgrpc-parser` (GIE, llm-d): vLLM's gRPC engine API (h2c), `vllm.grpc.engine.VllmEngine`.

As upstream, by the `:path` suffix, with one uncompressed gRPC frame holding the request message
(field numbers of vLLM's `vllm_engine.proto`):
- `…/Generate`: `GenerateRequest` — `tokenized.input_ids` (field 2 → 2) become the prompt's token
  ids, or `text` (field 3) the prompt text; neither is a 400 (`not supported request inputType`);
  `stream` (5) and `sampling_params.max_tokens` (4 → 8) are read;
- `…/Embed`: `EmbedRequest` — `tokenized.input_ids` (2 → 2), required (400 `missing tokenized
  input in EmbedRequest`);
- any other method is forwarded unread.
A frame that is not one uncompressed message is a 400 (`invalid or unsupported gRPC payload`). The
requests name no model (every ready endpoint is a candidate) and are never re-serialised.
Responses: `GenerateResponse` frames (`chunk` or `complete`, with prompt, completion and cached
token counts) or an `EmbedResponse` (`prompt_tokens`) give the usage."""

from __future__ import annotations

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser
from epp.requests import ApiKind, ErrorCode, InferenceRequest, RequestError, Usage
from epp.requests.grpcwire import FramedUsageReader, field_bytes, fields, grpc_payload, varints
from epp.requests.usage import UsageReader

GENERATE = "vllm.grpc.engine.VllmEngine/Generate"
EMBED = "vllm.grpc.engine.VllmEngine/Embed"


def _bad(message: str) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, message)


@register
class VllmGRPCParser(Plugin, RequestParser):
    type_name = "vllmgrpc-parser"
    paths = (GENERATE, EMBED)
    rewrites_body = False

    def parse(self, raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
        clean = path.split("?", 1)[0].rstrip("/")
        if not clean.endswith((GENERATE, EMBED)):
            return InferenceRequest(request_id, ApiKind.OTHER, path, "", headers, body_size=len(raw))
        try:
            message = grpc_payload(raw)
            tokenized = field_bytes(message, 2)
            token_ids = varints(tokenized, 2) if tokenized is not None else None
        except ValueError:
            raise _bad("invalid or unsupported gRPC payload") from None
        if clean.endswith(EMBED):
            if token_ids is None:
                raise _bad("missing tokenized input in EmbedRequest")
            return InferenceRequest(
                request_id, ApiKind.EMBEDDINGS, path, "", headers, token_ids=token_ids, body_size=len(raw)
            )
        text = field_bytes(message, 3)
        if token_ids is None and text is None:
            raise _bad("not supported request inputType")
        scalars = dict((n, v) for n, v in fields(message) if isinstance(v, int))
        sampling = field_bytes(message, 4)
        limits = [v for n, v in fields(sampling) if n == 8 and isinstance(v, int)] if sampling else []
        return InferenceRequest(
            request_id=request_id,
            api=ApiKind.COMPLETIONS,
            path=path,
            model="",
            headers=headers,
            prompt=text or b"",
            token_ids=token_ids,
            stream=bool(scalars.get(5, 0)),
            max_tokens=limits[-1] if limits else None,
            body_size=len(raw),
        )

    def usage_reader(self, streaming: bool) -> UsageReader:
        return VllmGrpcUsageReader(streaming)


class VllmGrpcUsageReader(FramedUsageReader):
    """Usage from the response's messages: GenerateResponse chunk/complete, or EmbedResponse."""

    __slots__ = ()

    def frame(self, payload: bytes) -> None:
        top = list(fields(payload))
        embed_tokens = [v for n, v in top if n == 2 and isinstance(v, int)]
        if embed_tokens:  # EmbedResponse.prompt_tokens (a varint where GenerateResponse has a message)
            self.usage = Usage(prompt_tokens=embed_tokens[-1], total_tokens=embed_tokens[-1])
            return
        for number, value in top:
            if not isinstance(value, bytes) or number not in (1, 2):
                continue
            # chunk: prompt 2, completion 3, cached 4; complete: prompt 3, completion 4, cached 5
            first = 2 if number == 1 else 3
            counts = {n: v for n, v in fields(value) if isinstance(v, int)}
            prompt, completion = counts.get(first, 0), counts.get(first + 1, 0)
            if prompt or completion:
                self.usage = Usage(prompt, completion, counts.get(first + 2, 0), prompt + completion)
