"""One simulated vLLM server: an aiohttp application in front of an ``EngineDriver``.

Many of these run in one process (one per simulated endpoint, each with its own port, engine,
Prometheus registry and optional KV-event socket). Every response names the endpoint that produced
it (``x-inference-pod``/``-port``/``-host``) so tests and benchmarks can see where a request went.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from epp.headers import SIM_HOST_HEADER, SIM_POD_HEADER, SIM_PORT_HEADER
from epp.kvevents import topic_for
from epp.requests.jsontext import loads
from epp.sim.config import EndpointConfig
from epp.sim.driver import EngineDriver
from epp.sim.engine import Engine, Rejection, Request
from epp.sim.kvpublisher import KVEventPublisher
from epp.sim.metrics import CONTENT_TYPE, build_registry, render
from epp.sim.openai_api import (
    EMBEDDING_DIMENSIONS,
    ApiError,
    Conversation,
    Generation,
    continue_conversation,
    output_length,
    parse_chat,
    parse_completion,
    parse_embedding_input,
    parse_responses,
    queued_responses_body,
    render_body,
    tokenize_body,
)
from epp.sim.pd import (
    RELEASE_PATH,
    KVLoadFailure,
    KVRegistry,
    RemoteBlocks,
    TransferRole,
    parse_kv_transfer_params,
    prefill_result_params,
    pull_remote_blocks,
)
from epp.sim.responses import embeddings_body, error_response, generation_body, json_response, models_body
from epp.sim.sampling import min_tokens_refusal, refusal
from epp.sim.sequences import OutputSequence, SequenceGroup
from epp.sim.sse import stream_error, stream_response
from epp.sim.stored_responses import ResponseStore
from epp.sim.tokens import sequence_seed
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RETURN_ERROR_HEADER = "X-Return-Error"
STATS_PATH = "/internal/stats"
SHUTDOWN_GRACE_SECONDS = 0.5
"""How long stopping waits for in-flight requests before cancelling them (aiohttp's default of
60 s would make every stop with an open stream hang for a minute)."""
MAX_HEADER_BYTES = 1024 * 1024
"""Longest request line or header the server reads. vLLM's (uvicorn with httptools) sets no limit
of its own; aiohttp's default, 8,190 bytes, answered a client's larger header (a long JWT, a big
cookie) with a plain-text 400 that vLLM would never send."""

Parser = Callable[[dict[str, Any]], Generation]


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """Where a running simulated server listens."""

    name: str
    host: str
    port: int
    engine_id: str
    model: str
    adapters: tuple[str, ...] = ()  # the LoRA adapters it serves besides `model`

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class SimServer:
    """A vLLM-compatible HTTP server backed by the engine model. ``start``/``stop`` it inside a
    running event loop; ``info`` says where it listens once started."""

    def __init__(self, config: EndpointConfig, registry: KVRegistry | None = None) -> None:
        self.config = config
        self.engine_id = f"{config.name}-{uuid.uuid4().hex[:12]}"
        self.engine = Engine(
            config.profile,
            config.model,
            lease_seconds=config.lease_seconds,
            record_kv_events=config.kv_events_endpoint is not None,
            scheduling_policy=config.scheduling_policy,
        )
        self._loras = {m.name: m for m in config.lora_modules}
        self._publisher = (
            KVEventPublisher(
                config.kv_events_endpoint,
                config.profile.block_size,
                {m.name: i for i, m in enumerate(config.lora_modules, start=1)},
            )
            if config.kv_events_endpoint
            else None
        )
        self.driver = EngineDriver(
            self.engine, config.time_scale, self._publisher.publish if self._publisher else None
        )
        self._registry = registry if registry is not None else KVRegistry()
        self._metrics = build_registry(self.engine, config.model)
        self._ids = itertools.count()
        self.stored_responses = ResponseStore()
        self._background: dict[str, asyncio.Task[None]] = {}  # background responses generating
        self._created = int(time.time())
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = config.port

    @property
    def info(self) -> EndpointInfo:
        return EndpointInfo(
            self.config.name,
            self.config.host,
            self.port,
            self.engine_id,
            self.config.model,
            tuple(self._loras),
        )

    async def start(self) -> None:
        """Listen and start the engine; if any part fails, what had started is stopped again."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._runner = runner = web.AppRunner(
            self._build_app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            # vLLM's server (uvicorn) reads a body as sent, whatever its Content-Encoding says:
            # aiohttp's decoding failed such a request with a 500 before any handler ran.
            auto_decompress=False,
        )
        await runner.setup()
        await web.TCPSite(runner, self.config.host, self.config.port).start()
        self.port = int(runner.addresses[0][1])
        self._session = aiohttp.ClientSession()
        if self._publisher is not None:
            self._publisher.open(topic_for(self.config.host, self.port, self.config.model))
            await self._publisher.announce_empty_cache(time.time())
        self.driver.start()
        self._registry.register(self.engine_id, self.driver)

    async def stop(self) -> None:
        """Also undoes a partial ``start``: every step is skipped when its part never started."""
        self._registry.unregister(self.engine_id)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await cancel_and_wait(*self._background.values())
        await self.driver.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._publisher is not None:
            self._publisher.close()

    # ----- application -----------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024**2)
        app.on_response_prepare.append(self._stamp_headers)
        app.router.add_post("/v1/completions", self._handler(parse_completion))
        app.router.add_post("/v1/chat/completions", self._handler(parse_chat))
        app.router.add_post("/v1/responses", self._handler(parse_responses))
        app.router.add_get("/v1/responses/{response_id}", self._retrieve_response)
        app.router.add_post("/v1/responses/{response_id}/cancel", self._cancel_response)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/completions/render", self._render_completion)
        app.router.add_post("/v1/chat/completions/render", self._render_chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/health/ready", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        app.router.add_get(STATS_PATH, self._stats)
        app.router.add_post(RELEASE_PATH, self._release)
        return app

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[SIM_POD_HEADER] = self.config.name
        response.headers[SIM_PORT_HEADER] = str(self.port)
        response.headers[SIM_HOST_HEADER] = self.config.host

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            forced = request.headers.get(RETURN_ERROR_HEADER)
            if forced is not None and request.path.startswith("/v1/"):
                raise _forced_error(forced)
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(ApiError(exc.status, exc.reason))

    def _handler(self, parse: Parser) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._generate(request, parse(await _api_body(request)))

        return handle

    # ----- generation ------------------------------------------------------------------------

    async def _generate(self, http: web.Request, gen: Generation) -> web.StreamResponse:
        lora = self._lora_for(gen.model)
        conversation = gen.conversation
        if conversation is not None and conversation.previous_response_id is not None:
            continue_conversation(gen, self.stored_responses.history(conversation.previous_response_id))
        role = parse_kv_transfer_params(gen.kv_transfer_params)
        if role.prefill_leg and gen.stream:
            raise ApiError(400, "Prefill does not support streaming", "stream")
        if (role.prefill_leg or role.remote) and len(gen.prompts) * gen.n > 1:
            raise ApiError(400, "P/D transfer supports a single prompt and n=1 per request", "prompt")
        self._check_sequences(gen)
        self._check_logprobs(gen)
        if gen.priority and self.config.scheduling_policy != "priority":
            raise ApiError(
                400, f"Got priority {gen.priority} but Priority scheduling is not enabled.", "priority"
            )
        sequences = [
            self._sequence(gen, i * gen.n + sample, prompt, lora, role, sample)
            for i, prompt in enumerate(gen.prompts)
            for sample in range(gen.n)
        ]
        group = SequenceGroup(sequences, gen.n)
        self._submit(group)
        if conversation is not None and conversation.background:
            return self._run_in_background(gen, conversation, group)
        try:
            if role.remote is not None and not await self._pulled(role.remote, group):
                failed = ApiError(500, "Internal server error")  # vLLM's answer to a failed generation
                return await stream_error(http, failed) if gen.stream else error_response(failed)
            if gen.stream:
                response = await stream_response(http, gen, group)
                self._store_response(gen, group, generation_body(gen, group, None))
                return response
            await group.wait_finished()
            kv = self._prefill_params(group) if role.prefill_leg else None
            body = generation_body(gen, group, kv)
            self._store_response(gen, group, body)
            return json_response(body)
        finally:
            group.abort_unfinished(self.driver)

    def _run_in_background(
        self, gen: Generation, conversation: Conversation, group: SequenceGroup
    ) -> web.Response:
        """vLLM's background mode: answer `queued` now and store the response when it finishes;
        until then a follow-up continues its input alone (vLLM: its messages, no output yet)."""
        queued = queued_responses_body(conversation.response_id, int(time.time()), gen.model)
        turns = [t for t in conversation.turns() if t[0] != "system"]
        self.stored_responses.keep(conversation.response_id, turns, queued)
        task = asyncio.create_task(self._finish_in_background(gen, group))
        self._background[conversation.response_id] = task
        task.add_done_callback(lambda _: self._background.pop(conversation.response_id, None))
        return json_response(dict(queued))

    async def _finish_in_background(self, gen: Generation, group: SequenceGroup) -> None:
        try:
            await group.wait_finished()
            self._store_response(gen, group, generation_body(gen, group, None))
        finally:
            group.abort_unfinished(self.driver)

    async def _retrieve_response(self, request: web.Request) -> web.Response:
        return json_response(self.stored_responses.retrieve(request.match_info["response_id"]))

    async def _cancel_response(self, request: web.Request) -> web.Response:
        """vLLM's cancel: a running background response becomes `cancelled` and stops generating."""
        response_id = request.match_info["response_id"]
        body = dict(self.stored_responses.cancel(response_id))
        task = self._background.get(response_id)
        if task is not None:
            await cancel_and_wait(task)
        return json_response(body)

    async def _pulled(self, remote: RemoteBlocks, group: SequenceGroup) -> bool:
        """Read a decode leg's KV from its prefill server. When that fails, vLLM's
        kv_load_failure_policy: `recompute` prefills the prompt here (True), `fail` ends the
        request (False)."""
        assert self._session is not None
        try:
            await pull_remote_blocks(remote, self._registry, self._session)
        except KVLoadFailure as failure:
            policy = self.config.kv_load_failure_policy
            log.warning(
                "%s: KV load failed (%s); kv_load_failure_policy %s", self.config.name, failure, policy
            )
            if policy != "recompute":
                return False
            for seq in group.sequences:
                self.driver.recompute_locally(seq.request)
        return True

    def _store_response(self, gen: Generation, group: SequenceGroup, body: dict[str, Any]) -> None:
        """Keep a finished Responses API answer for follow-ups and retrieval (not one cut short
        by its client)."""
        conversation = gen.conversation
        if conversation is not None and conversation.store and group.finished():
            text = group.sequences[0].text()
            self.stored_responses.keep(conversation.response_id, conversation.stored(text), body)

    def _check_sequences(self, gen: Generation) -> None:
        """Refuse, before a single one is built, more sequences (one engine request per prompt and
        sample) than vLLM allows or than the waiting queue could ever take: `n` = 10**9 once grew
        a simulator to 10 GB while it built them."""
        limit = self.config.max_n_sequences
        if gen.n > limit:
            raise ApiError(
                400,
                f"n must be at most {limit}, got {gen.n}. To increase this limit, start epp sim with "
                "--max-n-sequences (vLLM: the VLLM_MAX_N_SEQUENCES environment variable).",
                "n",
            )
        prompts = len(gen.prompts)
        self._check_queue(
            prompts * gen.n,
            f"{prompts * gen.n} sequences ({prompts} prompt{'s' if prompts > 1 else ''} x n={gen.n})",
            "n" if gen.n > 1 else "prompt",
        )

    def _check_logprobs(self, gen: Generation) -> None:
        """vLLM's engine-side check of `logprobs` (chat: `top_logprobs`) against `--max-logprobs`."""
        limit = self.config.max_logprobs
        if gen.logprobs is not None and gen.logprobs > limit:
            raise refusal(
                f"Requested sample logprobs of {gen.logprobs}, which is greater than max allowed: {limit}",
                "logprobs",
                gen.logprobs,
            )

    def _check_queue(self, sequences: int, what: str, param: str) -> None:
        """A request's sequences all enter the waiting queue at once: more than it holds could
        never be admitted, so that is the client's 400, not a 429 to retry."""
        queue = self.config.profile.max_waiting
        if sequences > queue:
            raise ApiError(
                400,
                f"this request needs {what}, but the waiting queue holds at most {queue} (--max-waiting): "
                "it could never be admitted",
                param,
            )

    def _sequence(
        self,
        gen: Generation,
        index: int,
        prompt: list[int],
        lora: str | None,
        role: TransferRole,
        sample: int,
    ) -> OutputSequence:
        max_len = self.config.profile.max_model_len
        limit = gen.max_tokens if gen.max_tokens is not None else max_len - len(prompt)
        if limit < 1 or len(prompt) + limit > max_len:
            wanted = max(limit, 0)
            raise ApiError(
                400,
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{len(prompt) + wanted} tokens ({len(prompt)} in the messages, {wanted} in the completion). "
                "Please reduce the length of the messages or completion.",
            )
        if gen.min_tokens > limit:  # vLLM checks it against the limit it filled in (chat)
            raise min_tokens_refusal(gen.min_tokens, limit)
        seed = sequence_seed(prompt, self.config.seed + sample)  # each of `n` samples differs
        sequences = len(gen.prompts) * gen.n
        call = gen.tools.plan(seed, limit, sequences) if gen.tools is not None else None
        if role.prefill_leg:
            count, reason = 1, "length"
        elif call is not None:
            # Guided decoding ends the text with the call: ignore_eos and min_tokens would only
            # add end-of-sequence tokens without text, which the simulator does not count. A
            # call not drawn whole did not fit: it ends where it was cut.
            written = len(call.pieces)
            if call.whole and written <= limit:
                count, reason = written, "stop"
            else:
                count, reason = min(written, limit), "length"
        else:
            count, reason = output_length(limit, seed, gen.ignore_eos, gen.min_tokens)
        request = Request(
            f"{self.config.name}-{next(self._ids)}",
            prompt,
            count,
            self.driver.now(),
            stop_reason=reason,
            lora=lora,
            remote_prefill=role.remote is not None,
            hold_blocks=role.prefill_leg,
            priority=gen.priority,
            cache_salt=gen.cache_salt or "",
        )
        sequence = OutputSequence(index, request, seed, call)
        request.output_ids = sequence.token_ids  # what its full answer blocks are hashed from
        return sequence

    def _submit(self, group: SequenceGroup) -> None:
        for seq in group.sequences:
            rejection = self.driver.submit(seq.request, group.event.set)
            if rejection is not None:
                group.abort_unfinished(self.driver)
                raise _rejection_error(rejection, self.config.profile.max_waiting)
            group.submitted.append(seq.request)

    def _lora_for(self, model: str) -> str | None:
        if model == self.config.model:
            return None
        if model in self._loras:
            return model
        raise ApiError(404, f"The model `{model}` does not exist.", "model")

    def _prefill_params(self, group: SequenceGroup) -> dict[str, Any]:
        """Where a finished prefill leg left its KV, for the decode leg."""
        leg = group.sequences[0].request
        assert leg.lease_key is not None
        return prefill_result_params(
            self.engine_id, leg.lease_key, leg.leased_blocks, self.config.host, self.port
        )

    # ----- other endpoints -------------------------------------------------------------------

    async def _embeddings(self, http: web.Request) -> web.Response:
        body = await _api_body(http)
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "'model' is required", "model")
        lora = self._lora_for(model)
        dimensions = body.get("dimensions")
        if dimensions is None:  # 0 is vLLM's 400, not the default
            dimensions = EMBEDDING_DIMENSIONS
        if not isinstance(dimensions, int) or not 1 <= dimensions <= 8192:
            raise ApiError(400, "'dimensions' must be an integer in 1..8192", "dimensions")
        encoding = body.get("encoding_format")
        if encoding not in (None, "float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", "encoding_format")
        max_len = self.config.profile.max_model_len
        prompts = parse_embedding_input(body)
        self._check_queue(len(prompts), f"{len(prompts)} inputs", "input")
        sequences = []
        for index, prompt in enumerate(prompts):
            if len(prompt) > max_len:
                raise ApiError(
                    400, f"input {index} has {len(prompt)} tokens; the limit is {max_len}", "input"
                )
            request = Request(
                f"{self.config.name}-{next(self._ids)}",
                prompt,
                0,
                self.driver.now(),
                stop_reason="stop",
                lora=lora,
            )
            sequences.append(OutputSequence(index, request, 0))
        group = SequenceGroup(sequences)
        self._submit(group)
        try:
            await group.wait_finished()
        finally:
            group.abort_unfinished(self.driver)
        return json_response(embeddings_body(model, prompts, dimensions, encoding == "base64"))

    async def _render_completion(self, http: web.Request) -> web.Response:
        """vLLM's `/v1/completions/render`: one GenerateRequest per prompt, nothing generated."""
        gen = parse_completion(await _api_body(http))
        self._lora_for(gen.model)
        rid = f"cmpl-{self.config.name}-{next(self._ids)}"
        return json_response([render_body(gen, prompt, f"{rid}-{i}") for i, prompt in enumerate(gen.prompts)])

    async def _render_chat(self, http: web.Request) -> web.Response:
        """vLLM's `/v1/chat/completions/render`: the chat template applied, as token ids."""
        gen = parse_chat(await _api_body(http))
        self._lora_for(gen.model)
        return json_response(
            render_body(gen, gen.prompts[0], f"chatcmpl-{self.config.name}-{next(self._ids)}")
        )

    async def _tokenize(self, http: web.Request) -> web.Response:
        """vLLM's `/tokenize`: a `prompt` string, or chat `messages` through the template."""
        body = await _api_body(http)
        body.setdefault("model", self.config.model)
        gen = parse_chat(body) if "messages" in body else parse_completion(body)
        self._lora_for(gen.model)
        return json_response(tokenize_body(gen.prompts[0], self.config.profile.max_model_len))

    async def _models(self, http: web.Request) -> web.Response:
        config = self.config
        return json_response(
            models_body(config.model, self._loras.values(), self._created, config.profile.max_model_len)
        )

    async def _health(self, http: web.Request) -> web.Response:
        return web.Response()

    async def _ready(self, http: web.Request) -> web.Response:
        return json_response({"status": "ready"})

    async def _metrics_page(self, http: web.Request) -> web.Response:
        return web.Response(body=render(self._metrics), headers={"Content-Type": CONTENT_TYPE})

    async def _reset_prefix_cache(self, http: web.Request) -> web.Response:
        if not self.engine.reset_prefix_cache():
            raise ApiError(409, "prefix cache is in use and cannot be reset")
        self.driver.wake()  # the loop publishes the AllBlocksCleared event
        return web.Response()

    async def _stats(self, http: web.Request) -> web.Response:
        return json_response(self.stats())

    def stats(self) -> dict[str, Any]:
        """Totals that tell what this server did (requests, P/D legs, cache hits) and its state."""
        stats, engine = self.engine.stats, self.engine
        return {
            "name": self.config.name,
            "host": self.config.host,
            "port": self.port,
            "engine_id": self.engine_id,
            "model": self.config.model,
            "role": self.config.role,
            "profile": self.config.profile.name,
            "requests": stats.requests_added,
            "kv_event_messages": self._publisher.sent if self._publisher is not None else 0,
            "prefill_only": stats.prefill_only,
            "remote_decode": stats.remote_decode,
            "rejected": stats.requests_rejected,
            "aborted": stats.requests_aborted,
            "preemptions": stats.preemptions,
            "prompt_tokens": stats.prompt_tokens,
            "generation_tokens": stats.generation_tokens,
            "cached_tokens": stats.cached_tokens_served,
            "prefix_cache_queries": stats.prefix_queries,
            "prefix_cache_hits": stats.prefix_hits,
            "finished": dict(stats.finished),
            "steps": stats.steps,
            "busy_seconds": stats.busy_seconds,
            "cached_blocks": engine.pool.num_cached(),
            "leases": engine.num_leases(),
            "leases_released": stats.leases_released,
            "leases_expired": stats.leases_expired,
            "running": engine.num_running,
            "waiting": engine.num_waiting,
            "kv_cache_usage": engine.kv_usage(),
        }

    async def _release(self, http: web.Request) -> web.Response:
        body = await _json_body(http)
        request_id = body.get("remote_request_id")
        if body.get("remote_engine_id") != self.engine_id or not isinstance(request_id, str):
            raise ApiError(404, f"no KV lease for engine {body.get('remote_engine_id')!r} here")
        count = self.engine.release_lease(request_id)
        if count is None:
            raise ApiError(404, f"no KV lease for request {request_id!r} (already read or expired)")
        self.driver.wake()
        return json_response({"blocks": count})


async def _api_body(request: web.Request) -> dict[str, Any]:
    """An OpenAI API request's body. vLLM's routes depend on `validate_json_request`, which refuses
    any media type but `application/json` with a 400 before reading the body: `curl -d` without
    `-H 'content-type: application/json'` (sent as a form) fails there, so it fails here too."""
    media_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(400, "Unsupported Media Type: Only 'application/json' is allowed")
    return await _json_body(request)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _forced_error(value: str) -> ApiError:
    try:
        status = int(value)
    except ValueError:
        status = 0
    if not 400 <= status <= 599:
        return ApiError(400, f"{RETURN_ERROR_HEADER} must be an HTTP error status (400-599), got {value!r}")
    return ApiError(status, f"simulated failure requested by {RETURN_ERROR_HEADER}: {status}")


def _rejection_error(rejection: Rejection, max_waiting: int) -> ApiError:
    if rejection is Rejection.QUEUE_FULL:
        return ApiError(429, f"the waiting queue is full ({max_waiting} requests); retry later")
    return ApiError(400, "the request needs more KV-cache blocks than this server has", "max_tokens")
