"""The virtual-time engine's token ids are exactly what `epp sim` derives from the same body, and
its block hashes (a leading piece's memoised) what the engine computes from those ids."""

from __future__ import annotations

from epp.bench.prompts import PromptTokenizer
from epp.bench.workload import BenchRequest, WorkloadSpec, generate
from epp.kvevents import prompt_block_hashes
from epp.sim.openai_api import parse_chat, parse_completion


def sim_token_ids(request: BenchRequest) -> list[int]:
    body = request.body("m")
    parse = parse_chat if request.messages else parse_completion
    return parse(body).prompts[0]


def assert_as_the_simulator(tokenizer: PromptTokenizer, request: BenchRequest) -> None:
    ids = tokenizer.token_ids(request)
    assert ids == sim_token_ids(request)
    # block sizes that cut the leading piece inside, at its end and past it (no full block)
    for block_size in (1, 4, 16, 64):
        for namespace in ("m", "lora-a"):
            expected = prompt_block_hashes(ids, block_size, namespace)
            assert tokenizer.block_hashes(request, ids, block_size, namespace) == expected
            assert tokenizer.block_hashes(request, ids, block_size, namespace) == expected  # memoised


def test_completion_and_chat_match_the_simulator() -> None:
    tokenizer = PromptTokenizer()
    for api in ("completion", "chat"):
        spec = WorkloadSpec.model_validate(
            {
                "name": "t",
                "api": api,
                "data": {
                    "type": "shared_prefix",
                    "num_groups": 2,
                    "num_prompts_per_group": 3,
                    "system_prompt_len": 40,
                    "question_len": 9,
                    "output_len": 2,
                },
                "load": {"rates": [1]},
            }
        )
        for request in generate(spec, 1.0):
            assert_as_the_simulator(tokenizer, request)


def test_multi_turn_histories_match_the_simulator() -> None:
    spec = WorkloadSpec.model_validate(
        {
            "name": "t",
            "api": "chat",
            "data": {
                "type": "multi_turn",
                "conversations": 2,
                "turns": 4,
                "system_prompt_len": 30,
                "user_len": 5,
                "output_len": 4,
            },
            "load": {"rates": [1]},
        }
    )
    tokenizer = PromptTokenizer(max_memo=3)  # also exercises the memo being dropped when full
    for request in generate(spec, 1.0):
        assert_as_the_simulator(tokenizer, request)


def test_text_that_does_not_split_cleanly_is_tokenized_whole() -> None:
    # "ab" + "cd" would be one token "abcd", and "x." + "5" joins digits to punctuation: neither
    # join is a letter followed by a non-letter, so the pieces are not tokenized separately.
    for parts in (("ab", "cd"), ("x.", "5 y"), ("hello", " world", "again")):
        request = BenchRequest(0, 0.0, "g", 1, prompt=parts)
        assert_as_the_simulator(PromptTokenizer(), request)


def shared_prefix_requests(groups: int, per_group: int, system_len: int = 40) -> list[BenchRequest]:
    spec = WorkloadSpec.model_validate(
        {
            "name": "t",
            "data": {
                "type": "shared_prefix",
                "num_groups": groups,
                "num_prompts_per_group": per_group,
                "system_prompt_len": system_len,
                "question_len": 9,
                "output_len": 2,
            },
            "load": {"rates": [1]},
        }
    )
    return generate(spec, 1.0)


def test_only_pieces_seen_twice_are_memoised() -> None:
    """A request's own question is tokenized once and dropped; a group's system prompt, seen by
    every request of the group, is kept."""
    tokenizer = PromptTokenizer()
    requests = shared_prefix_requests(2, 3)
    for request in requests:
        ids = tokenizer.token_ids(request)
        tokenizer.block_hashes(request, ids, 16, "m")
    system_prompts = {request.prompt[0] for request in requests}
    assert set(tokenizer._memo) == system_prompts
    assert all(request.prompt[-1] not in tokenizer._memo for request in requests)
