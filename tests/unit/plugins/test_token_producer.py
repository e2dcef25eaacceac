"""`token-producer` with a local tokenizer: chat requests rendered with the model's chat template
(Qwen2.5's, from tests/unit/datalayer/chat_templates) and encoded as vLLM encodes them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from epp.datalayer.tokenize import TokenizedPrompt
from epp.plugins.token_producer import TokenProducer
from epp.requests import ApiKind, InferenceRequest
from tests.unit.plugin_helpers import plugin

TEMPLATES = Path(__file__).parents[1] / "datalayer" / "chat_templates"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}]
RENDERED = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def _tokenizer(directory: Path) -> str:
    """A small byte-level BPE with ChatML's special tokens and a BOS post-processor, trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [f"You are terse. What is {i}+{i}? system user assistant" for i in range(100)]
    trainer = trainers.BpeTrainer(
        vocab_size=300, show_progress=False, special_tokens=["<s>", "<|im_start|>", "<|im_end|>"]
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return str(path)


@pytest.fixture
def qwen_dir(tmp_path: Path) -> Path:
    shutil.copy(TEMPLATES / "qwen2.5" / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    _tokenizer(tmp_path)
    return tmp_path


def _chat(messages: list[dict[str, str]]) -> InferenceRequest:
    body = {"model": "m", "messages": messages}
    return InferenceRequest("r", ApiKind.CHAT, "/v1/chat/completions", "m", {}, body=body)


def _fallbacks(producer: TokenProducer, backend: str, reason: str) -> float:
    return producer.metrics.tokenization_fallbacks.labels(backend, reason)._value.get()


def test_chat_is_rendered_with_the_template_and_encoded_without_added_tokens(qwen_dir: Path) -> None:
    producer = plugin(TokenProducer, {"tokenizerFile": str(qwen_dir / "tokenizer.json")})
    assert producer.backend == "local"
    request = _chat(MESSAGES)
    producer.prepare(request, [])
    expected = producer.local.tokenizer.encode(RENDERED, add_special_tokens=False).ids  # type: ignore[union-attr]
    assert request.attributes[producer.name] == TokenizedPrompt(expected, "local")
    assert expected[0] == producer.local.tokenizer.token_to_id("<|im_start|>")  # type: ignore[union-attr]
    completion = InferenceRequest(
        "c", ApiKind.COMPLETIONS, "/v1/completions", "m", {}, body={"model": "m", "prompt": "What is 2+2?"}
    )
    producer.prepare(completion, [])
    assert completion.attributes[producer.name].token_ids[0] == 0  # completions keep the BOS
    asked = _chat(MESSAGES)
    asked.body["add_special_tokens"] = True  # as vLLM, a chat request may ask for them
    producer.prepare(asked, [])
    assert asked.attributes[producer.name].token_ids == [0, *expected]


def test_without_a_template_chat_falls_back_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    producer = plugin(TokenProducer, {"tokenizerFile": _tokenizer(tmp_path)})
    assert "chat requests cannot be tokenized locally: no chat template in" in caplog.text
    request = _chat(MESSAGES)
    producer.prepare(request, [])
    assert producer.name not in request.attributes
    assert _fallbacks(producer, "local", "no_chat_template") == 1


def test_a_template_raising_falls_back_counted(tmp_path: Path) -> None:
    shutil.copy(TEMPLATES / "mistral-nemo" / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    producer = plugin(TokenProducer, {"tokenizerFile": _tokenizer(tmp_path)})
    request = _chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    producer.prepare(request, [])
    assert producer.name not in request.attributes
    assert _fallbacks(producer, "local", "chat_template") == 1


async def test_local_template_backs_up_an_unreachable_render_server(qwen_dir: Path) -> None:
    producer = plugin(
        TokenProducer,
        {
            "modelName": "m",
            "vllm": {"url": "http://127.0.0.1:9"},
            "tokenizerFile": str(qwen_dir / "tokenizer.json"),
        },
    )
    request = _chat(MESSAGES)
    await producer.prepare_async(request)
    assert _fallbacks(producer, "vllm", "connection") == 1
    expected = producer.local.tokenizer.encode(RENDERED, add_special_tokens=False).ids  # type: ignore[union-attr]
    assert request.attributes[producer.name] == TokenizedPrompt(expected, "local")
    await producer.stop()
