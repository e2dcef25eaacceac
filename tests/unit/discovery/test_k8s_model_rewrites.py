"""InferenceModelRewrites followed in the cluster (through the real client and the API double):
only the pool's, updated as objects change, and a cluster without the CRD still serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epp.datastore import Datastore
from epp.discovery.kubernetes import PoolDiscovery, PoolRef
from epp.requestcontrol.model_rewrite import ModelRewrite, ModelRewrites
from tests.k8s_double import MODEL_REWRITES, PODS, POOLS_V1, ApiServerDouble
from tests.k8s_double.objects import pod, pool_v1
from tests.unit.discovery.conftest import FAST, until


def model_rewrite(name: str, pool: str, model: str, target: str, created: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": {
            "poolRef": {"name": pool, "group": "inference.networking.k8s.io"},
            "rules": [{"matches": [{"model": {"value": model}}], "targets": [{"modelRewrite": target}]}],
        },
    }


async def discover(
    api: ApiServerDouble, tmp_path: Path, seen: list[list[ModelRewrite]], datastore: Datastore | None = None
) -> PoolDiscovery:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(PODS, pod("a", "10.0.0.1", labels={"app": "vllm"}))
    discovery = PoolDiscovery(
        PoolRef("pool"),
        datastore or Datastore(),
        lambda _: None,
        api.write_kubeconfig(tmp_path / "kc"),
        timing=FAST,
        on_model_rewrites=seen.append,
    )
    await discovery.start()
    return discovery


async def test_the_pools_rewrites_are_followed(api: ApiServerDouble, tmp_path: Path) -> None:
    api.apply(MODEL_REWRITES, model_rewrite("mine", "pool", "llama", "llama-v2", "2026-01-01T00:00:00Z"))
    api.apply(MODEL_REWRITES, model_rewrite("theirs", "other-pool", "llama", "nope", "2025-01-01T00:00:00Z"))
    seen: list[list[ModelRewrite]] = []
    discovery = await discover(api, tmp_path, seen)
    try:
        await until(lambda: bool(seen) and bool(seen[-1]), "the rewrites")
        assert ModelRewrites(seen[-1]).choose("llama") == ("mine", "llama-v2")
        api.apply(MODEL_REWRITES, model_rewrite("older", "pool", "llama", "llama-v1", "2025-06-01T00:00:00Z"))
        await until(
            lambda: ModelRewrites(seen[-1]).choose("llama") == ("older", "llama-v1"), "the older rule"
        )
        api.delete(MODEL_REWRITES, "older")
        api.delete(MODEL_REWRITES, "mine")
        await until(lambda: seen[-1] == [], "the rules to go")
    finally:
        await discovery.stop()


async def test_without_the_rewrite_crd_discovery_still_serves(tmp_path: Path) -> None:
    api = ApiServerDouble(served=[PODS, POOLS_V1])
    await api.start()
    seen: list[list[ModelRewrite]] = []
    datastore = Datastore()
    try:
        discovery = await discover(api, tmp_path, seen, datastore)
        try:
            await until(lambda: datastore.synced, "the first sync")
            api.apply(PODS, pod("b", "10.0.0.2", labels={"app": "vllm"}))
            await until(lambda: len(datastore.endpoints()) == 2, "pod events after the rewrite watch gave up")
            assert seen == []
        finally:
            await discovery.stop()
    finally:
        await api.stop()
