"""`agent-identity` (llm-d): a coding agent's session header becomes the request's fairness id."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.requestcontrol import RoutedRequest

CONFIGS = Path(__file__).parents[2] / "data" / "upstream" / "configs"
PREFIX = "llmd-router-ebab687__pkg__epp__framework__plugins__requestcontrol__requestheader__agentidentity__"


def routed(config: str, headers: dict[str, str]) -> RoutedRequest:
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=8000))
    store.synced = True
    director, _ = build_director(load_config_file(CONFIGS / config), store, PluginContext())
    body = orjson.dumps({"model": "m", "prompt": "hi"})
    return director.handle_body(body, {":path": "/v1/completions", **headers}, None)


@pytest.mark.parametrize(
    ("headers", "identity", "fairness"),
    [
        ({"x-claude-code-session-id": "cc-1", "session-id": "codex"}, "cc-1", "cc-1"),
        ({"x-session-affinity": "oc-2"}, "oc-2", "oc-2"),
        ({"session_id": "codex-legacy"}, "codex-legacy", "codex-legacy"),
        ({"session-id": "s", "x-gateway-inference-fairness-id": "tenant"}, "s", "tenant"),  # explicit wins
        ({"session-id": ""}, None, "default-flow"),
        ({}, None, "default-flow"),
    ],
)
def test_default_session_headers(headers: dict[str, str], identity: str | None, fairness: str) -> None:
    request = routed(f"{PREFIX}README.md__1.yaml", headers).request
    assert request.attributes.get("agent-identity") == identity
    assert request.fairness_id == fairness


def test_additional_session_headers_come_first() -> None:
    headers = {"x-another-agent-id": "mine", "x-claude-code-session-id": "cc"}
    assert routed(f"{PREFIX}README.md__2.yaml", headers).request.fairness_id == "mine"
    assert (
        routed(f"{PREFIX}README.md__2.yaml", {"x-claude-code-session-id": "cc"}).request.fairness_id == "cc"
    )
