"""Configuration of one simulated endpoint, shared by the CLI and the Python API."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from epp.sim.profiles import DEFAULT_PROFILE, Profile, get_profile

ROLES = ("both", "prefill", "decode")


@dataclass(frozen=True, slots=True)
class LoraModule:
    """A LoRA adapter served next to the base model (vLLM ``--lora-modules``)."""

    name: str
    path: str = ""
    base_model_name: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Everything one simulated vLLM server needs; ``port=0`` picks a free port."""

    name: str = "sim-0"
    host: str = "127.0.0.1"
    port: int = 0
    model: str = "sim-model"
    profile: Profile = field(default_factory=lambda: get_profile(DEFAULT_PROFILE))
    time_scale: float = 1.0
    lora_modules: tuple[LoraModule, ...] = ()
    role: str = "both"
    seed: int = 0
    kv_events_endpoint: str | None = None
    lease_seconds: float = 30.0
    # Most samples (`n`) one request may ask for: vLLM's VLLM_MAX_N_SEQUENCES and its default.
    max_n_sequences: int = 16384
    # vLLM's --scheduling-policy: "fcfs", or "priority" (the body's `priority` orders the queue).
    scheduling_policy: str = "fcfs"
    # vLLM's --max-logprobs: the most alternatives per token a request may ask for.
    max_logprobs: int = 20
    # vLLM's kv_load_failure_policy: "fail" (its default) or "recompute" (epp.sim.pd).
    kv_load_failure_policy: str = "fail"


def parse_lora_modules(values: Iterable[str]) -> tuple[LoraModule, ...]:
    """Accepts vLLM's forms: ``name=path``, a JSON object ``{"name", "path", "base_model_name"}``,
    and, for convenience, comma-separated bare names (``a,b``)."""
    modules: list[LoraModule] = []
    for value in values:
        text = value.strip()
        if text.startswith("{"):
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                raise ValueError(f"LoRA module JSON needs a string 'name': {value}")
            modules.append(LoraModule(data["name"], str(data.get("path", "")), data.get("base_model_name")))
            continue
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, path = item.partition("=")
            modules.append(LoraModule(name, path))
    return tuple(modules)
