"""Tokenizing prompts the way the engine does, for the precise prefix cache.

Backends, tried in this order for a request:

- **render** (llm-d's `vllm` backend): vLLM's `POST /v1/completions/render` and
  `/v1/chat/completions/render`, which apply the chat template and return the prompt's token ids
  (`[{"token_ids": [...]}, ...]` per completions prompt, `{"token_ids": [...]}` for chat);
- **uds** (llm-d's `udsTokenizerConfig`): llm-d's tokenizer sidecar, gRPC over a Unix domain
  socket (`epp.datalayer.uds_tokenizer`), which renders with vLLM's code;
- **tokenize**: vLLM's `POST /tokenize` (`{"model", "prompt"}` or `{"model", "messages",
  "add_generation_prompt": true}` → `{"tokens": [...]}`), when the server has no render API (404);
- **local**: a `tokenizer.json` loaded with the `tokenizers` library; chat requests are first
  rendered with the model's chat template from the same directory (`epp.datalayer.chat_template`)
  and encoded without added special tokens, as vLLM does;
- **estimate** (llm-d's zero-config backend): 4 bytes of prompt per "token" — only good for the
  approximate index and length checks, never matching the engine's blocks.

All HTTP is async (aiohttp, one pooled session) with a per-request timeout. Results are cached:
remote ones by the exact request (a retried or repeated prompt costs no round trip), local ones
by text prefix (the tokens of a long shared system prompt are reused and only the rest is
tokenized; see `PrefixTokenCache`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import xxhash

from epp.datalayer.uds_tokenizer import UdsTokenizerClient, UdsTokenizerError
from epp.framework import DataKey
from epp.requests.jsontext import dumps
from epp.requests.tokenids import are_ints

log = logging.getLogger(__name__)

TOKENIZED_PROMPT = DataKey("TokenizedPrompt", default_producer="token-producer")

COMPLETIONS_RENDER_PATH = "/v1/completions/render"
CHAT_RENDER_PATH = "/v1/chat/completions/render"
TOKENIZE_PATH = "/tokenize"
# Token ids a remote tokenizer's result cache holds in all (a list of Python ints, ~36 bytes a
# token: ~38 MB). Its 4,096 entries alone did not bound it: 4,096 long prompts held gigabytes.
CACHED_TOKENS = 1 << 20


@dataclass(frozen=True, slots=True)
class MultiModalFeature:
    """One multimodal item of a prompt (llm-d's `MultiModalFeature`): its modality (image, video,
    audio), its content hash, and the placeholder tokens it occupies in the token ids."""

    modality: str
    hash: str
    offset: int = 0
    length: int = 0


@dataclass(frozen=True, slots=True)
class TokenizedPrompt:
    token_ids: list[int]
    source: str  # render | tokenize | local | estimate
    mm_features: tuple[MultiModalFeature, ...] = ()  # in token order


class TokenizeError(Exception):
    """Tokenization failed; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class LRU:
    """A small bounded map, least recently used out first: at most `capacity` entries and, with
    `weigh`, at most `max_weight` in all (an entry heavier than that alone is not kept)."""

    def __init__(self, capacity: int, max_weight: int = 0, weigh: Callable[[Any], int] | None = None) -> None:
        self.capacity = capacity
        self.max_weight = max_weight
        self._weigh = weigh
        self.weight = 0
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        weigh = self._weigh
        if weigh is not None:
            old = self._items.get(key)
            self.weight += weigh(value) - (0 if old is None else weigh(old))
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity or (weigh is not None and self.weight > self.max_weight):
            _, dropped = self._items.popitem(last=False)
            if weigh is not None:
                self.weight -= weigh(dropped)

    def __len__(self) -> int:
        return len(self._items)


def _render_body(body: dict[str, Any], model: str, chat: bool) -> dict[str, Any]:
    """The request as vLLM's render API takes it: the client's own body (so the chat template sees
    every field it would in the real request) with the model the render server serves."""
    out = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    out["model"] = model or body.get("model", "")
    return out


def _token_list(value: Any) -> list[int]:
    if isinstance(value, list) and are_ints(value):
        return value
    raise TokenizeError("bad_response", "token ids are not a list of integers")


class CachedTokenizer(ABC):
    """A remote backend's results cached by the exact request (the client's body with the served
    model), with the longer timeout for requests carrying media."""

    def __init__(
        self,
        model: str,
        timeout: float,
        mm_timeout: float,
        cache_size: int = 4096,
        cache_tokens: int = CACHED_TOKENS,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.mm_timeout = mm_timeout
        self._cache = LRU(cache_size, cache_tokens, _token_count)

    def _timeout_for(self, body: dict[str, Any]) -> float:
        messages = body.get("messages")
        if isinstance(messages, list) and any(
            isinstance(m, dict) and isinstance(m.get("content"), list) and m["content"] for m in messages
        ):
            return self.mm_timeout
        return self.timeout

    async def tokenize(self, body: dict[str, Any], chat: bool) -> TokenizedPrompt:
        request = _render_body(body, self.model, chat)
        key = (chat, xxhash.xxh3_128_intdigest(dumps(request, sort_keys=True)))
        cached: TokenizedPrompt | None = self._cache.get(key)
        if cached is not None:
            return cached
        result = await self._fetch(request, chat, self._timeout_for(body))
        self._cache.put(key, result)
        return result

    @abstractmethod
    async def _fetch(self, request: dict[str, Any], chat: bool, timeout: float) -> TokenizedPrompt: ...

    @abstractmethod
    async def close(self) -> None: ...


def _token_count(prompt: TokenizedPrompt) -> int:
    return len(prompt.token_ids)


class UdsTokenizer(CachedTokenizer):
    """llm-d's tokenizer sidecar over a Unix domain socket (`epp.datalayer.uds_tokenizer`)."""

    def __init__(
        self, socket_file: str, model: str, timeout: float, mm_timeout: float, use_tcp: bool = False
    ) -> None:
        super().__init__(model, timeout, mm_timeout)
        self.client = UdsTokenizerClient(socket_file, model, use_tcp)

    async def _fetch(self, request: dict[str, Any], chat: bool, timeout: float) -> TokenizedPrompt:
        try:
            ids, features = await self.client.render(request, chat, timeout)
        except UdsTokenizerError as exc:
            raise TokenizeError(exc.reason, str(exc)) from None
        return TokenizedPrompt(ids, "uds", _render_features({"features": features}))

    async def close(self) -> None:
        await self.client.close()


class VLLMTokenizer(CachedTokenizer):
    """vLLM's render API, falling back to `/tokenize` when the server has no render route."""

    def __init__(
        self,
        url: str,
        model: str,
        timeout: float,
        mm_timeout: float,
        cache_size: int = 4096,
        cache_tokens: int = CACHED_TOKENS,
    ) -> None:
        super().__init__(model, timeout, mm_timeout, cache_size, cache_tokens)
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._no_render = False  # learnt from a 404/405: use /tokenize from then on

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=90),
                json_serialize=lambda obj: dumps(obj).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self, request: dict[str, Any], chat: bool, timeout: float) -> TokenizedPrompt:
        if not self._no_render:
            path = CHAT_RENDER_PATH if chat else COMPLETIONS_RENDER_PATH
            status, reply = await self._post(path, request, timeout)
            if status in (404, 405):
                log.warning("%s%s answered %d: using %s instead", self.url, path, status, TOKENIZE_PATH)
                self._no_render = True
            elif status != 200:
                raise TokenizeError("http_status", f"{path} answered {status}")
            else:
                return self._rendered(reply, chat)
        status, reply = await self._post(TOKENIZE_PATH, self._tokenize_body(request, chat), timeout)
        if status != 200:
            raise TokenizeError("http_status", f"{TOKENIZE_PATH} answered {status}")
        if not isinstance(reply, dict):
            raise TokenizeError("bad_response", "/tokenize did not answer an object")
        return TokenizedPrompt(_token_list(reply.get("tokens")), "tokenize")

    @staticmethod
    def _rendered(reply: Any, chat: bool) -> TokenizedPrompt:
        if not chat:  # one GenerateRequest per prompt; the first prompt is the one scored
            if not isinstance(reply, list) or not reply:
                raise TokenizeError("bad_response", "completions render did not answer a non-empty list")
            reply = reply[0]
        if not isinstance(reply, dict):
            raise TokenizeError("bad_response", "render did not answer an object")
        return TokenizedPrompt(_token_list(reply.get("token_ids")), "render", _render_features(reply))

    @staticmethod
    def _tokenize_body(request: dict[str, Any], chat: bool) -> dict[str, Any]:
        if chat:
            out = {"model": request["model"], "messages": request.get("messages", [])}
            out["add_generation_prompt"] = request.get("add_generation_prompt", True)
            for key in ("continue_final_message", "chat_template", "chat_template_kwargs", "tools"):
                if key in request:
                    out[key] = request[key]
            return out
        prompt = request.get("prompt", "")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        return {"model": request["model"], "prompt": prompt}

    async def _post(self, path: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
        try:
            async with self._client().post(
                self.url + path,
                data=dumps(body),
                headers={"content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    return response.status, None
        except TimeoutError:
            raise TokenizeError("timeout", f"{self.url}{path} after {timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise TokenizeError("connection", f"{self.url}{path}: {exc}") from None
        try:
            return 200, orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TokenizeError("bad_response", f"{path} answered invalid JSON") from None


def _render_features(reply: dict[str, Any]) -> tuple[MultiModalFeature, ...]:
    """vLLM's `features` {`mm_hashes`: {modality: [hash]}, `mm_placeholders`: {modality:
    [{offset, length}]}}, paired per modality up to the shorter list (as llm-d), in token order.
    Malformed entries are skipped: the features are a routing hint, never worth a failure."""
    features = reply.get("features")
    if not isinstance(features, dict):
        return ()
    hashes, places = features.get("mm_hashes"), features.get("mm_placeholders")
    if not isinstance(hashes, dict) or not isinstance(places, dict):
        return ()
    found = []
    for modality, items in hashes.items():
        ranges = places.get(modality)
        if not isinstance(items, list) or not isinstance(ranges, list):
            continue
        for item, span in zip(items, ranges, strict=False):
            if isinstance(item, str) and item and isinstance(span, dict):
                offset, length = span.get("offset"), span.get("length")
                if isinstance(offset, int) and isinstance(length, int):
                    found.append(MultiModalFeature(str(modality), item, offset, length))
    return tuple(sorted(found, key=lambda f: f.offset))


class PrefixTokenCache:
    """Token ids of text prefixes, so text sharing a long prefix with earlier text is tokenized
    only past it. Text is hashed in `chunk`-character steps (each step's hash chained on the
    previous one); for each step boundary it keeps the ids of the tokens before the last
    word-initial token (one starting at whitespace, a pre-tokenizer boundary) at or before it.
    A lookup reuses the longest stored prefix and tokenizes only the rest."""

    def __init__(self, chunk: int = 256, capacity: int = 16_384) -> None:
        self.chunk = chunk
        self._store = LRU(capacity)
        self.hits = 0

    def _hashes(self, text: str) -> list[int]:
        out: list[int] = []
        h = 0
        data = text.encode("utf-32-le")
        step = 4 * self.chunk
        for start in range(0, len(data) - step + 1, step):
            h = xxhash.xxh3_64_intdigest(data[start : start + step], h)
            out.append(h)
        return out

    def lookup(self, text: str) -> tuple[list[int], int, list[int]]:
        """(cached ids, characters they cover, every step hash of `text`)."""
        hashes = self._hashes(text)
        for step in range(len(hashes) - 1, -1, -1):
            found = self._store.get(hashes[step])
            if found is not None:
                self.hits += 1
                ids, cut, covered = found
                return list(ids[:cut]), covered, hashes
        return [], 0, hashes

    def store(self, text: str, ids: Sequence[int], starts: Sequence[int], hashes: Sequence[int]) -> None:
        """Remember cut points of `text` tokenized as `ids` (character start offsets `starts`, -1
        where unknown): for each step boundary, the last word-initial token at or before it."""
        shared = tuple(ids)
        cuts = [i for i in range(1, len(ids)) if starts[i] >= 0 and text[starts[i] : starts[i] + 1].isspace()]
        best = next_cut = 0
        for step, h in enumerate(hashes, start=1):
            boundary = step * self.chunk
            while next_cut < len(cuts) and starts[cuts[next_cut]] <= boundary:
                best = cuts[next_cut]
                next_cut += 1
            if best:
                self._store.put(h, (shared, best, starts[best]))


class LocalTokenizer:
    """A mounted `tokenizer.json` (HuggingFace `tokenizers`), with prefix caches (one for text
    encoded with the tokenizer's special tokens, as completions prompts are, one without, as
    rendered chat prompts are: the template writes them)."""

    def __init__(self, path: str, cache: PrefixTokenCache | None = None) -> None:
        from tokenizers import Tokenizer  # imported only when a file is configured

        self.tokenizer = Tokenizer.from_file(path)
        self.cache = cache or PrefixTokenCache()
        self.chat_cache = PrefixTokenCache(self.cache.chunk)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        cache = self.cache if add_special_tokens else self.chat_cache
        cached, covered, hashes = cache.lookup(text)
        encoding = self.tokenizer.encode(
            text[covered:], add_special_tokens=add_special_tokens and covered == 0
        )
        ids = cached + list(encoding.ids)
        starts = [-1] * len(cached) + [covered + start for start, _ in encoding.offsets]
        if hashes:
            cache.store(text, ids, starts, hashes)
        return ids


def estimate_prompt(body: dict[str, Any], chat: bool) -> TokenizedPrompt:
    """llm-d's `estimate` backend: the prompt's bytes (chat: each message's role then its text),
    zero-padded to a multiple of 4, read as little-endian uint32 "tokens". A chat's media blocks
    become multimodal features with llm-d's estimate hashes (xxHash64 of the image or video URL,
    or of the audio's data and format, in hex); unlike llm-d, no placeholder tokens stand for
    them in the ids (length 0; offset: the token position they appear at)."""
    features: list[MultiModalFeature] = []
    if chat:
        data = _chat_bytes(body, features)
    else:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            if prompt and are_ints(prompt):
                return TokenizedPrompt(list(prompt), "estimate")
            prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
        data = str(prompt).encode()
    data += b"\0" * (-len(data) % 4)
    tokens = [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]
    return TokenizedPrompt(tokens, "estimate", tuple(features))


def _chat_bytes(body: dict[str, Any], features: list[MultiModalFeature]) -> bytes:
    data = bytearray()
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        data += str(message.get("role", "")).encode()
        content = message.get("content")
        if isinstance(content, str):
            data += content.encode()
            continue
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                data += str(part.get("text", "")).encode()
            elif (media := _media_item(part)) is not None:
                features.append(MultiModalFeature(media[0], media[1], len(data) // 4))
    if body.get("tools"):
        data += dumps(body["tools"])
    return bytes(data)


_MEDIA_MODALITY = {"image_url": "image", "video_url": "video", "audio_url": "audio", "input_audio": "audio"}


def _media_item(part: dict[str, Any]) -> tuple[str, str] | None:
    """A chat content block's (modality, estimate hash), None for other blocks or empty media."""
    kind = part.get("type")
    if not isinstance(kind, str) or (modality := _MEDIA_MODALITY.get(kind)) is None:
        return None
    value = part.get(kind)
    if isinstance(value, str):  # a bare URL string, as some clients send
        content = value
    elif isinstance(value, dict) and kind == "input_audio":
        content = f"{value.get('data', '')}{value.get('format', '')}"
    elif isinstance(value, dict):
        content = str(value.get("url", ""))
    else:
        return None
    if not content:
        return None
    return modality, format(xxhash.xxh64_intdigest(content.encode()), "x")
