"""Fixtures that start real processes (simulators, the EPP, Envoy) on free 127.0.0.1 ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from epp.stack.envoy import BODY_MODES, EnvoyOptions
from epp.stack.stack import Stack, StackConfig

FAST_SIM = ["--profile=tiny-test"]
RANDOM_ONLY = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: random-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: random-picker
"""
"""A config that routes at random: the baseline a routing policy is compared with."""


def stack_config(run_dir: Path, **overrides: object) -> StackConfig:
    config = StackConfig(
        run_dir=run_dir,
        sims=3,
        sim_args=list(FAST_SIM),
        epp_args=["--served-header=x-epp-destination", "--refresh-metrics-interval=50ms"],
        envoy=EnvoyOptions(listen_port=0, admin_port=0),
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


StackFactory = Callable[..., AbstractAsyncContextManager[Stack]]


async def failure_report(stack: Stack, *responses: httpx.Response, lines: int = 40) -> str:
    """What a test prints when a response is not the one it expects, so that one failure in a full
    run says why without a rerun: each response's status, headers and body; the health Envoy sees
    for the pool's hosts (EDS, from the EPP's view) and its counts of what befell requests (retries,
    resets, connection failures, ext_proc errors); the EPP's and Envoy's last log lines."""
    parts = [f"HTTP {r.status_code} {dict(r.headers)} {r.text[:500]!r}" for r in responses]
    if stack.envoy is not None and stack.envoy.running:
        clusters = await stack.envoy_clusters_text()
        parts += [line for line in clusters.splitlines() if "::health_flags::" in line]
        stats = await stack.envoy_stats(r"ext_proc|^cluster\.(pool|epp)\.(upstream_rq|upstream_cx|lb_)")
        parts.append(" ".join(f"{name}={value}" for name, value in sorted(stats.items()) if value))
    for process in (stack.epp, stack.envoy):
        if process is not None:
            parts.append(f"--- {process.name} ({process.log_path}):\n{process.log_tail(lines)}")
    return "\n".join(parts)


@pytest.fixture
def make_stack(tmp_path_factory: pytest.TempPathFactory) -> StackFactory:
    def factory(name: str = "stack", **overrides: object) -> AbstractAsyncContextManager[Stack]:
        return Stack(stack_config(tmp_path_factory.mktemp(name), **overrides))

    return factory


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BODY_MODES)
async def shared_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """A fail-closed stack shared by a module's read-only tests, once per ext_proc body mode."""
    envoy = EnvoyOptions(listen_port=0, admin_port=0, body_mode=request.param)
    async with Stack(stack_config(tmp_path_factory.mktemp("shared"), envoy=envoy)) as stack:
        yield stack
