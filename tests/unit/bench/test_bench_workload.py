"""Workload generation: deterministic from the seed, lengths exact in the simulator's tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from epp.bench.workload import WorkloadSpec, generate, load_spec
from epp.sim.tokens import tokenize

WORKLOADS = Path(__file__).parents[3] / "bench" / "workloads"


def shared_prefix(**data: object) -> WorkloadSpec:
    fields = {
        "type": "shared_prefix",
        "num_groups": 3,
        "num_prompts_per_group": 4,
        "system_prompt_len": 50,
        "question_len": 7,
        "output_len": 5,
    }
    return WorkloadSpec.model_validate(
        {"name": "t", "seed": 9, "data": {**fields, **data}, "load": {"rates": [1]}}
    )


def test_same_seed_same_requests_and_rates_only_rescale_arrivals() -> None:
    spec = shared_prefix()
    assert generate(spec, 2.0) == generate(spec, 2.0)
    slow, fast = generate(spec, 1.0), generate(spec, 4.0)
    assert [r.prompt for r in slow] == [r.prompt for r in fast]
    assert [r.arrival / 4 for r in slow] == pytest.approx([r.arrival for r in fast])
    other_seed = spec.model_copy(update={"seed": 10})
    assert [r.prompt for r in generate(other_seed, 1.0)] != [r.prompt for r in slow]


def test_shared_prefix_lengths_are_exact_tokens_and_groups_share_their_prefix() -> None:
    requests = generate(shared_prefix(), 1.0)
    assert len(requests) == 12
    arrivals = [r.arrival for r in requests]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0
    for request in requests:
        body = request.body("m")
        assert len(tokenize(body["prompt"])) == 50 + 7
        assert body["max_tokens"] == 5 and body["ignore_eos"] and body["stream"]
    by_group: dict[str, set[str]] = {}
    for request in requests:
        by_group.setdefault(request.group, set()).add(request.prompt[0])
    assert len(by_group) == 3 and all(len(systems) == 1 for systems in by_group.values())
    assert len({next(iter(s))[:20] for s in by_group.values()}) == 3, "groups do not share a prefix"


def test_requests_beyond_the_prompt_set_repeat_prompts() -> None:
    requests = generate(shared_prefix(requests=30), 1.0)
    assert len(requests) == 30
    assert len({r.prompt for r in requests}) == 12


def test_multi_turn_history_grows_and_turns_follow_each_other() -> None:
    spec = WorkloadSpec.model_validate(
        {
            "name": "chat",
            "api": "chat",
            "data": {
                "type": "multi_turn",
                "conversations": 2,
                "turns": 3,
                "system_prompt_len": 20,
                "user_len": 6,
                "output_len": {"distribution": "uniform", "mean": 5, "min": 3, "max": 9},
                "think_time": 0.5,
            },
            "load": {"rates": [1]},
        }
    )
    requests = generate(spec, 1.0)
    assert len(requests) == 6
    first, second, third = requests[:3]
    assert first.follows is None and second.follows == 0 and third.follows == 1
    assert second.arrival == 0.5 and second.path == "/v1/chat/completions"
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[len(first.messages)] == ("assistant", second.messages[2][1])
    assert len(tokenize(second.messages[2][1])) == first.max_tokens, "replies have the output length"
    assert 3 <= first.max_tokens <= 9


def test_multi_turn_needs_chat() -> None:
    with pytest.raises(ValidationError, match="api: chat"):
        WorkloadSpec.model_validate(
            {
                "name": "x",
                "data": {
                    "type": "multi_turn",
                    "conversations": 1,
                    "turns": 1,
                    "system_prompt_len": 1,
                    "user_len": 1,
                    "output_len": 1,
                },
                "load": {"rates": [1]},
            }
        )


def test_lognormal_lengths_have_the_stated_mean_within_bounds() -> None:
    spec = WorkloadSpec.model_validate(
        {
            "name": "mixed",
            "data": {
                "type": "mixed",
                "requests": 4000,
                "prompt_len": {
                    "distribution": "lognormal",
                    "mean": 300,
                    "sigma": 0.8,
                    "min": 10,
                    "max": 5000,
                },
                "output_len": 4,
            },
            "load": {"rates": [1]},
        }
    )
    lengths = [len("".join(r.prompt).split()) for r in generate(spec, 1.0)]
    assert min(lengths) >= 10 and max(lengths) <= 5000
    assert sum(lengths) / len(lengths) == pytest.approx(300, rel=0.05)


@pytest.mark.parametrize("path", sorted(WORKLOADS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_workloads_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert generate(spec, spec.load.rates[0])
