"""Pods restarting and scaling during a run: a workload's `churn`, and the seeded schedule of pool
changes it stands for.

A restart is what a rollout or node drain does to a vLLM pod: it leaves the pool (the EPP's
datastore drops it, as discovery would when the pod turns unready), drains its in-flight requests
for up to `shutdown_timeout` (vLLM's `--shutdown-timeout`: 0, vLLM's default, aborts them), exits,
and `startup` seconds later is back in the pool under the same name and address with an empty KV
cache. Scaling sets the number of pods: new ones start empty, removed ones (the highest-numbered,
as a StatefulSet scales in) leave and drain the same way.

Times are fractions of the span over which the workload's requests arrive, so every rate sees the
same number of changes at the same points of its request stream; restart times and the order of
the pods are drawn from the churn's own seed, so every policy meets the same schedule. A restart
due while its pod is still down (a long drain) is skipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScaleStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float = Field(ge=0.0, le=1.0, description="fraction of the arrival span")
    endpoints: int = Field(ge=1, description="pods in the pool from then on")


class Churn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    restarts: int = Field(default=0, ge=0, description="pod restarts, one in each equal slice of the span")
    startup: float = Field(default=5.0, ge=0.0, description="seconds from a pod's exit to its return")
    shutdown_timeout: float = Field(
        default=30.0, ge=0.0, description="vLLM --shutdown-timeout: drain bound; 0 aborts in-flight requests"
    )
    scale: tuple[ScaleStep, ...] = ()

    @model_validator(mode="after")
    def _ordered(self) -> Churn:
        times = [step.at for step in self.scale]
        if times != sorted(times):
            raise ValueError("scale steps must be in time order")
        return self


@dataclass(frozen=True, slots=True)
class ChurnEvent:
    """At `at` seconds: restart pod number `pod`, or scale the pool to `endpoints` pods."""

    at: float
    kind: Literal["restart", "scale"]
    pod: int = -1
    endpoints: int = 0


def schedule(churn: Churn, span: float, endpoints: int) -> list[ChurnEvent]:
    """The pool changes over `span` seconds of arrivals on a pool that starts with `endpoints`
    pods, in time order (a scale step before a restart at the same time). Restarts come one at a
    seeded time in each equal slice of the span, in rounds as a rollout makes them: each picks,
    in a seeded order, a pod (of those the scale steps put in the pool at its time) not restarted
    yet in this round."""
    rng = random.Random(churn.seed)
    events = [ChurnEvent(step.at * span, "scale", endpoints=step.endpoints) for step in churn.scale]
    slice_ = span / churn.restarts if churn.restarts else 0.0
    unrestarted: list[int] = []  # this round's pods not restarted yet
    for at in (slice_ * (k + rng.random()) for k in range(churn.restarts)):
        size = endpoints
        for step in churn.scale:
            if step.at * span <= at:
                size = step.endpoints
        unrestarted = [pod for pod in unrestarted if pod < size] or list(range(size))
        pod = unrestarted.pop(rng.randrange(len(unrestarted)))
        events.append(ChurnEvent(at, "restart", pod=pod))
    return sorted(events, key=lambda e: (e.at, e.kind != "scale"))
