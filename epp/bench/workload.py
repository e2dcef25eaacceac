"""Workloads: a YAML description, and the exact request list it stands for at a given rate.

A workload file names a data shape (shared prefix as inference-perf's `shared_prefix`, multi-turn
chat, or a mixed length distribution), the Poisson rates to run it at, and the cluster to run it on.
`generate(spec, rate)` turns it into `BenchRequest`s; everything is drawn from the spec's seed, so
both engines, and every rate and baseline, replay identical prompts. Content and arrival times use
separate random streams: changing the rate rescales the same arrival draws without changing text.

Multi-turn conversations are closed loops: turn k+1 is sent `think_time` seconds after turn k's
response ended (`follows`), and its history holds the earlier turns with assistant replies of the
requested output length (the simulator's cache keeps prompt blocks only, so reply wording does not
matter for caching; only lengths do).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from epp.bench.churn import Churn
from epp.bench.text import TextGenerator
from epp.headers import FAIRNESS_HEADER, OBJECTIVE_HEADER

Api = Literal["completion", "chat"]
COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Length(_Spec):
    """A token length: fixed, uniform in [min, max], or log-normal (ShareGPT-like long tail) with
    the given mean and sigma of the underlying normal, clipped to [min, max]."""

    distribution: Literal["fixed", "uniform", "lognormal"] = "fixed"
    mean: int = Field(ge=1)
    sigma: float = Field(default=0.0, ge=0.0)
    min: int = Field(default=1, ge=1)
    max: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_int(cls, data: Any) -> Any:
        return {"mean": data} if isinstance(data, int) else data

    def sample(self, rng: random.Random) -> int:
        upper = self.max if self.max is not None else 1 << 30
        if self.distribution == "fixed":
            value = float(self.mean)
        elif self.distribution == "uniform":
            value = rng.uniform(self.min, upper)
        else:
            # choose mu so that the distribution's mean is `mean`
            mu = math.log(self.mean) - self.sigma**2 / 2
            value = rng.lognormvariate(mu, self.sigma)
        return max(self.min, min(upper, round(value)))


class SharedPrefix(_Spec):
    """inference-perf `shared_prefix`: groups share a system prompt, each prompt adds a question."""

    type: Literal["shared_prefix"]
    num_groups: int = Field(ge=1)
    num_prompts_per_group: int = Field(ge=1)
    system_prompt_len: int = Field(ge=1)
    question_len: int = Field(ge=1)
    output_len: int = Field(ge=1)
    requests: int | None = Field(default=None, ge=1, description="default: every prompt once")


class MultiTurn(_Spec):
    type: Literal["multi_turn"]
    conversations: int = Field(ge=1)
    turns: int = Field(ge=1)
    system_prompts: int = Field(
        default=1, ge=1, description="distinct system prompts shared by conversations"
    )
    system_prompt_len: int = Field(ge=1)
    user_len: Length
    output_len: Length
    think_time: float = Field(default=1.0, ge=0.0)


class Mixed(_Spec):
    type: Literal["mixed"]
    requests: int = Field(ge=1)
    prompt_len: Length
    output_len: Length


class Load(_Spec):
    """Poisson arrivals, one run per rate (requests/s; new conversations/s for multi-turn)."""

    type: Literal["poisson"] = "poisson"
    rates: list[float] = Field(min_length=1)


class Cluster(_Spec):
    endpoints: int = Field(default=8, ge=1)
    profile: str = "llama-3.1-8b-h100"
    num_gpu_blocks: int | None = Field(default=None, ge=1, description="override the profile's KV cache")


class WorkloadSpec(_Spec):
    name: str
    description: str = ""
    seed: int = 0
    api: Api = "completion"
    data: Annotated[SharedPrefix | MultiTurn | Mixed, Field(discriminator="type")]
    load: Load
    cluster: Cluster = Cluster()
    churn: Churn | None = Field(default=None, description="pods restarting and scaling during each run")

    @model_validator(mode="after")
    def _chat_for_conversations(self) -> WorkloadSpec:
        if isinstance(self.data, MultiTurn) and self.api != "chat":
            raise ValueError("multi_turn workloads need api: chat")
        return self


def load_spec(path: Path) -> WorkloadSpec:
    return WorkloadSpec.model_validate(yaml.safe_load(path.read_text()))


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request to send. Completions send `"".join(prompt)`; chat sends `messages`. `arrival` is
    seconds after the run starts or, when `follows` is set, after that request's response ended.
    `tenant` and `objective` go out as GIE's fairness-id and objective headers when set."""

    index: int
    arrival: float
    group: str
    max_tokens: int
    prompt: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    follows: int | None = None
    tenant: str = ""
    objective: str = ""

    @property
    def path(self) -> str:
        return CHAT_PATH if self.messages else COMPLETIONS_PATH

    def gateway_headers(self) -> dict[str, str]:
        """The flow-control headers this request carries: its tenant and its objective."""
        headers = {}
        if self.tenant:
            headers[FAIRNESS_HEADER] = self.tenant
        if self.objective:
            headers[OBJECTIVE_HEADER] = self.objective
        return headers

    def body(self, model: str) -> dict[str, Any]:
        """The OpenAI body both engines send: streamed, with usage, exactly `max_tokens` out."""
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.messages:
            body["messages"] = [{"role": role, "content": content} for role, content in self.messages]
        else:
            body["prompt"] = "".join(self.prompt)
        return body


def generate(spec: WorkloadSpec, rate: float) -> list[BenchRequest]:
    """The requests of `spec` at `rate`, ordered by index; first turns are in arrival order."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    text = TextGenerator(spec.seed)
    content = random.Random(spec.seed + 1)
    arrivals = _arrival_times(random.Random(spec.seed + 2), rate)
    data = spec.data
    if isinstance(data, SharedPrefix):
        return _shared_prefix(data, spec.api, text, content, arrivals)
    if isinstance(data, MultiTurn):
        return _multi_turn(data, text, content, arrivals)
    return _mixed(data, spec.api, text, content, arrivals)


def _arrival_times(rng: random.Random, rate: float) -> Any:
    now = 0.0
    while True:
        yield now
        now += rng.expovariate(1.0) / rate


def _single_turn(
    index: int, arrival: float, group: str, api: Api, parts: tuple[str, ...], out: int
) -> BenchRequest:
    """A one-shot request: completions concatenate `parts`; chat puts the first part in a system
    message when there are two (the shared instructions) and the last in the user message."""
    if api == "completion":
        return BenchRequest(index, arrival, group, out, prompt=parts)
    messages = (
        (("system", parts[0]), ("user", parts[1].lstrip())) if len(parts) == 2 else (("user", parts[0]),)
    )
    return BenchRequest(index, arrival, group, out, messages=messages)


def _shared_prefix(
    data: SharedPrefix, api: Api, text: TextGenerator, content: random.Random, arrivals: Any
) -> list[BenchRequest]:
    prompts: list[tuple[str, str, str]] = []
    for group in range(data.num_groups):
        system = text.text(data.system_prompt_len)
        for _ in range(data.num_prompts_per_group):
            prompts.append((f"g{group}", system, text.continuation(data.question_len)))
    count = data.requests or len(prompts)
    order = [i % len(prompts) for i in range(count)]
    content.shuffle(order)
    requests = []
    for index, (which, arrival) in enumerate(zip(order, arrivals, strict=False)):
        name, system, question = prompts[which]
        requests.append(_single_turn(index, arrival, name, api, (system, question), data.output_len))
    return requests


def _multi_turn(
    data: MultiTurn, text: TextGenerator, content: random.Random, arrivals: Any
) -> list[BenchRequest]:
    systems = [text.text(data.system_prompt_len) for _ in range(data.system_prompts)]
    requests: list[BenchRequest] = []
    for conversation, start in zip(range(data.conversations), arrivals, strict=False):
        history: tuple[tuple[str, str], ...] = (("system", systems[conversation % data.system_prompts]),)
        previous: int | None = None
        for _ in range(data.turns):
            history += (("user", text.text(data.user_len.sample(content))),)
            out = data.output_len.sample(content)
            index = len(requests)
            arrival = start if previous is None else data.think_time
            requests.append(
                BenchRequest(index, arrival, f"c{conversation}", out, messages=history, follows=previous)
            )
            history += (("assistant", text.text(out)),)
            previous = index
    return requests


def _mixed(
    data: Mixed, api: Api, text: TextGenerator, content: random.Random, arrivals: Any
) -> list[BenchRequest]:
    requests = []
    for index, arrival in zip(range(data.requests), arrivals, strict=False):
        prompt = text.text(data.prompt_len.sample(content))
        requests.append(
            _single_turn(index, arrival, f"r{index}", api, (prompt,), data.output_len.sample(content))
        )
    return requests
