"""Tokenization for the precise prefix cache: vLLM's render API (served by the simulator), the
/tokenize fallback, failures as TokenizeError, the result cache, and the local prefix cache."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator

import pytest
import xxhash
from aiohttp import web

from epp.datalayer.tokenize import (
    LocalTokenizer,
    MultiModalFeature,
    PrefixTokenCache,
    TokenizeError,
    VLLMTokenizer,
    estimate_prompt,
)
from epp.sim.cluster import SimCluster, make_configs
from epp.sim.profiles import TINY_TEST
from epp.sim.tokens import render_chat, tokenize

CHAT = {
    "model": "sim-model",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
}


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with SimCluster(make_configs(1, profile=TINY_TEST, model="sim-model")) as sims:
        yield sims.endpoints[0].url


async def test_render_api_gives_the_engines_tokens(sim_url: str) -> None:
    client = VLLMTokenizer(sim_url, "sim-model", 5.0, 30.0)
    try:
        chat = await client.tokenize(CHAT, chat=True)
        assert chat.source == "render"
        assert chat.token_ids == tokenize(render_chat([("system", "Be brief."), ("user", "Hi")]))
        completion = await client.tokenize({"model": "x", "prompt": "the quick brown fox"}, chat=False)
        assert completion.token_ids == tokenize("the quick brown fox")
        again = await client.tokenize(CHAT, chat=True)
        assert again is chat  # cached: no second round trip
    finally:
        await client.close()


async def fake_vllm(
    handler_status: int, tokens: list[int] | None = None
) -> tuple[web.AppRunner, str, list[str]]:
    calls: list[str] = []

    async def render(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"error": "no"}, status=handler_status)

    async def tokenize_route(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response(
            {"count": 3, "max_model_len": 10, "tokens": tokens or [1, 2, 3], "token_strs": None}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions/render", render)
    app.router.add_post("/tokenize", tokenize_route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", calls


async def test_servers_without_render_fall_back_to_tokenize() -> None:
    runner, url, calls = await fake_vllm(404)
    client = VLLMTokenizer(url, "m", 5.0, 30.0)
    try:
        result = await client.tokenize(CHAT, chat=True)
        assert (result.source, result.token_ids) == ("tokenize", [1, 2, 3])
        other = dict(CHAT, messages=[{"role": "user", "content": "other"}])
        await client.tokenize(other, chat=True)
        assert calls == ["/v1/chat/completions/render", "/tokenize", "/tokenize"]
    finally:
        await client.close()
        await runner.cleanup()


async def test_failures_are_tokenize_errors() -> None:
    runner, url, _ = await fake_vllm(500)
    client = VLLMTokenizer(url, "m", 5.0, 30.0)
    try:
        with pytest.raises(TokenizeError) as error:
            await client.tokenize(CHAT, chat=True)
        assert error.value.reason == "http_status"
    finally:
        await client.close()
        await runner.cleanup()
    unreachable = VLLMTokenizer(url, "m", 0.5, 0.5)  # the server is gone
    try:
        with pytest.raises(TokenizeError) as error:
            await unreachable.tokenize(CHAT, chat=True)
        assert error.value.reason == "connection"
    finally:
        await unreachable.close()


def test_estimate_backend_packs_four_bytes_per_token() -> None:
    assert estimate_prompt({"prompt": "abcde"}, chat=False).token_ids == [
        int.from_bytes(b"abcd", "little"),
        int.from_bytes(b"e\0\0\0", "little"),
    ]
    assert estimate_prompt({"prompt": [5, 6]}, chat=False).token_ids == [5, 6]
    assert estimate_prompt({"messages": [{"role": "u", "content": "hey"}]}, chat=True).token_ids == [
        int.from_bytes(b"uhey", "little")
    ]


def test_render_replies_carry_their_multimodal_features() -> None:
    reply = {
        "token_ids": [1, 2, 3, 4, 5, 6],
        "features": {
            "mm_hashes": {"image": ["b", "a", "extra"], "audio": "not a list"},
            "mm_placeholders": {"image": [{"offset": 4, "length": 2}, {"offset": 1, "length": 2}]},
        },
    }
    rendered = VLLMTokenizer._rendered(reply, chat=True)
    # Paired per modality up to the shorter list, in token order; the malformed audio is skipped.
    assert rendered.mm_features == (
        MultiModalFeature("image", "a", 1, 2),
        MultiModalFeature("image", "b", 4, 2),
    )
    assert VLLMTokenizer._rendered([{"token_ids": [1]}], chat=False).mm_features == ()


def test_estimate_backend_hashes_chat_media_as_llm_d_does() -> None:
    url = "https://example.com/cat.png"
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": ""}},  # nothing to hash
    ]
    prompt = estimate_prompt({"messages": [{"role": "user", "content": content}]}, chat=True)
    assert (
        prompt.token_ids
        == estimate_prompt({"messages": [{"role": "user", "content": "look"}]}, True).token_ids
    )
    assert prompt.mm_features == (
        MultiModalFeature("image", format(xxhash.xxh64_intdigest(url.encode()), "x"), 2),
        MultiModalFeature("audio", format(xxhash.xxh64_intdigest(b"AAAAwav"), "x"), 2),
    )


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small byte-level BPE trained here (no model download), saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [
        f"the system prompt rule {i} says answer briefly and politely to every question" for i in range(200)
    ]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, show_progress=False))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_local_prefix_cache_reuses_a_shared_prefix_exactly(tokenizer_file: str) -> None:
    local = LocalTokenizer(tokenizer_file, PrefixTokenCache(chunk=64))
    system = " ".join(f"the system prompt rule {i} says answer briefly" for i in range(60))
    reference = LocalTokenizer(tokenizer_file, PrefixTokenCache(chunk=10**9))
    for question in range(5):
        text = f"{system} question {question}: why politely?"
        assert local.encode(text) == reference.tokenizer.encode(text).ids
    assert local.cache.hits >= 4


async def _held_by_cache(sim_url: str, words: int) -> int:
    """Bytes a fresh client's result cache still holds after 200 distinct prompts of `words`
    words, with a budget of 20,000 tokens."""
    client = VLLMTokenizer(sim_url, "sim-model", 5.0, 30.0, cache_tokens=20_000)

    async def one(i: int) -> None:
        await client.tokenize({"model": "x", "prompt": f"{i} " + "word " * words}, chat=False)

    try:
        await one(-1)  # the session and the connection
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            await one(i)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        await client.close()


async def test_the_result_cache_is_bounded_in_tokens_not_only_entries(sim_url: str) -> None:
    """4,096 cached results of long prompts held gigabytes of token ids: the cache now holds
    at most `cache_tokens` ids, so 200 prompts of 1,000 words hold about what 200 of 50 words
    (10,000 tokens, all kept) do, in the same run, not 20 times as much."""
    short = await _held_by_cache(sim_url, 50)
    assert await _held_by_cache(sim_url, 1_000) <= 3 * short
