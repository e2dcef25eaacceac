"""`token-producer` (legacy name `tokenizer`): the prompt's token ids, as the engine will see them,
for the precise prefix cache (llm-d's `TokenizedPrompt`).

With `vllm` (or `modelName`) set, the director awaits the model server's render API before
scheduling (`epp.datalayer.tokenize`: render, then `/tokenize` on servers without it); with
`udsTokenizerConfig`, llm-d's tokenizer sidecar over its Unix socket
(`epp.datalayer.uds_tokenizer`); with `tokenizerFile` (this EPP's addition) a mounted
`tokenizer.json` tokenizes prompts locally (chat requests rendered first with the chat template of
the file's directory, as vLLM renders them), and is the fallback when the server fails; with none,
llm-d's `estimate` backend packs 4 prompt bytes per "token" — enough for length checks, never
matching the engine's blocks. A failure never fails the request: it is counted
(`llm_d_epp_tokenization_fallbacks_total`) and logged, and the request is scheduled without
precise prefix data.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field, model_validator

from epp.datalayer import AsyncDataProducer, BackgroundService, DataProducer
from epp.datalayer.chat_template import ChatTemplate, ChatTemplateError
from epp.datalayer.kvblocks import KVIndexMetrics
from epp.datalayer.tokenize import (
    TOKENIZED_PROMPT,
    CachedTokenizer,
    LocalTokenizer,
    TokenizedPrompt,
    TokenizeError,
    UdsTokenizer,
    VLLMTokenizer,
    estimate_prompt,
)
from epp.datastore import Datastore, Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.params.strict import StrictModel
from epp.params.values import Duration
from epp.requests import ApiKind, InferenceRequest
from epp.requests.tokenids import are_ints

log = logging.getLogger(__name__)

DEFAULT_RENDER_URL = "http://localhost:8000"
UDS_TIMEOUT, UDS_MM_TIMEOUT = 5.0, 30.0  # llm-d's UDS client: text, requests with media
LOG_EVERY = 60.0  # seconds between repeated warnings of one failure reason


class VLLMParams(StrictModel):
    url: str = ""
    http: str = Field(default="", description="older name of url")
    timeout: Duration = 5.0
    mm_timeout: Duration = 30.0


class UdsParams(StrictModel):
    socket_file: str = ""
    use_tcp: bool = Field(default=False, description="socketFile is host:port (llm-d: testing only)")
    model_tokenizer_map: dict[str, str] = Field(default_factory=dict)

    def model_for(self, model: str) -> str:
        """llm-d's resolution: the model's mapped tokenizer (a tokenizer.json names its directory)."""
        if not self.model_tokenizer_map:
            return model
        path = self.model_tokenizer_map.get(model)
        if path is None:
            raise ValueError(f"udsTokenizerConfig.modelTokenizerMap has no tokenizer for model {model!r}")
        return os.path.dirname(path) if os.path.basename(path) == "tokenizer.json" else path


class TokenProducerParams(PluginParams):
    model_name: str = ""
    vllm: VLLMParams | None = None
    estimate: dict[str, Any] | None = None  # multimodal placeholder tuning: text prompts ignore it
    uds_tokenizer_config: UdsParams | None = None
    tokenizer_file: str = Field(default="", description="a tokenizer.json for local tokenization")

    @model_validator(mode="after")
    def _one_backend(self) -> TokenProducerParams:
        uds = self.uds_tokenizer_config is not None
        # modelName alone selects vllm (llm-d >= v0.9); beside udsTokenizerConfig it names the
        # sidecar's model, as older configs write it.
        vllm = self.vllm is not None or (bool(self.model_name) and not uds)
        if sum((self.estimate is not None, vllm, uds)) > 1:
            raise ValueError(
                "only one of 'estimate', 'vllm' (or 'modelName') and 'udsTokenizerConfig' may be set"
            )
        if uds and not self.model_name:
            raise ValueError("'modelName' must be specified with udsTokenizerConfig")
        return self


SyncTokenizer = Callable[[InferenceRequest], list[int] | None]


@register
class TokenProducer(Plugin, DataProducer, AsyncDataProducer, BackgroundService):
    type_name = "token-producer"
    aliases = ("tokenizer",)
    Params = TokenProducerParams
    produces = TOKENIZED_PROMPT

    def __init__(self, name: str, params: TokenProducerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.metrics = KVIndexMetrics.for_registry(context.metrics.registry)
        self.remote: CachedTokenizer | None = None
        self._remote_backend = ""
        if params.vllm is not None or (params.model_name and params.uds_tokenizer_config is None):
            vllm = params.vllm or VLLMParams()
            url = vllm.url or vllm.http or DEFAULT_RENDER_URL
            self.remote = VLLMTokenizer(url, params.model_name, vllm.timeout, vllm.mm_timeout)
            self._remote_backend = "vllm"
        elif (uds := params.uds_tokenizer_config) is not None:
            model = uds.model_for(params.model_name)
            self.remote = UdsTokenizer(uds.socket_file, model, UDS_TIMEOUT, UDS_MM_TIMEOUT, uds.use_tcp)
            self._remote_backend = "uds"
        self.local = LocalTokenizer(params.tokenizer_file) if params.tokenizer_file else None
        self.chat_template: ChatTemplate | None = None
        self._no_template = ""  # why chat requests cannot be tokenized locally
        if self.local is not None:
            try:
                self.chat_template = ChatTemplate.from_directory(
                    os.path.dirname(params.tokenizer_file) or "."
                )
            except (ChatTemplateError, OSError, ValueError) as exc:
                self._no_template = str(exc)
                log.warning("%s: chat requests cannot be tokenized locally: %s", name, exc)
        # Set by the virtual-time benchmark: the simulated engines' own tokenizer.
        self.sync_tokenizer: SyncTokenizer | None = None
        self._last_warning: dict[str, float] = {}

    @property
    def backend(self) -> str:
        if self.remote is not None:
            return self._remote_backend
        return "local" if self.local is not None else "estimate"

    async def start(self, datastore: Datastore) -> None:
        return None

    async def stop(self) -> None:
        if self.remote is not None:
            await self.remote.close()

    async def prepare_async(self, request: InferenceRequest) -> None:
        if (
            self.remote is not None
            and request.api in (ApiKind.CHAT, ApiKind.COMPLETIONS)
            and _token_prompt(request) is None  # token ids: `prepare` takes them as they are
        ):
            try:
                request.attributes[self.name] = await self.remote.tokenize(
                    request.body, request.api is ApiKind.CHAT
                )
            except TokenizeError as exc:
                self._failed(self._remote_backend, exc.reason, str(exc))
        # The other backends now too, so async producers awaited after this one (burst) see the ids.
        self.prepare(request, ())

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        if self.name in request.attributes or request.api not in (ApiKind.CHAT, ApiKind.COMPLETIONS):
            return
        chat = request.api is ApiKind.CHAT
        given = _token_prompt(request)
        if given is not None:
            request.attributes[self.name] = TokenizedPrompt(given, "prompt")
            return
        if self.sync_tokenizer is not None:
            ids = self.sync_tokenizer(request)
            if ids is not None:
                request.attributes[self.name] = TokenizedPrompt(ids, "simulator")
            return
        if self.local is not None:
            self._tokenize_locally(request, self.local, chat)
            return
        if self.remote is None:
            request.attributes[self.name] = estimate_prompt(request.body, chat)

    def _tokenize_locally(self, request: InferenceRequest, local: LocalTokenizer, chat: bool) -> None:
        """Completions text as it is (with the tokenizer's special tokens); chat rendered with the
        model's chat template, its special tokens written by the template (as vLLM does)."""
        if chat:
            if self.chat_template is None:
                self._failed("local", "no_chat_template", self._no_template)
                return
            try:
                text = self.chat_template.render(request.body)
            except ChatTemplateError as exc:
                self._failed("local", "chat_template", str(exc))
                return
        else:
            prompt = request.body.get("prompt")
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                return
            text = prompt
        try:
            # vLLM's default: chat text carries the template's special tokens, completions get
            # the tokenizer's; a request may ask otherwise.
            add_special = request.body.get("add_special_tokens", not chat)
            ids = local.encode(text, add_special_tokens=add_special is True)
        except Exception as exc:  # the tokenizers library raises plain Exceptions
            self._failed("local", "error", str(exc))
            return
        request.attributes[self.name] = TokenizedPrompt(ids, "local")

    def _failed(self, backend: str, reason: str, detail: str) -> None:
        self.metrics.tokenization_fallbacks.labels(backend, reason).inc()
        now = time.monotonic()
        if now - self._last_warning.get(reason, -LOG_EVERY) >= LOG_EVERY:
            self._last_warning[reason] = now
            log.warning(
                "%s: tokenization failed (%s); scheduling without precise prefix data "
                "(repeats are counted in llm_d_epp_tokenization_fallbacks_total)",
                self.name,
                detail,
            )


def _token_prompt(request: InferenceRequest) -> list[int] | None:
    """A completions prompt given as token ids (one prompt, or the first of several)."""
    if request.api is not ApiKind.COMPLETIONS:
        return None
    prompt = request.body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and are_ints(prompt):
        return list(prompt)
    return None
