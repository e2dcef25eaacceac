"""`epp sidecar` as a real process started with llm-d's SSRF flags only (`--enable-ssrf-protection
--inference-pool`; the API server found through $KUBECONFIG, as llm-d's client finds it outside a
cluster), its allowlist built from an InferencePool in the Kubernetes API server double, under
the RBAC rules the P/D overlay gives the sidecar. Real `epp sim` prefill and decode engines.

Every process listens on 127.0.0.1, so the pods all have that IP and the pool's targetPorts tell
them apart: each pod's active-ports annotation names its own port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from epp.discovery.k8s.model import ACTIVE_PORTS_ANNOTATION
from epp.sidecar.proxy import SSRF_REFUSED
from epp.stack.processes import ManagedProcess, epp_command, ready_file_probe, wait_until
from tests.integration.test_sidecar import LocalServer, chat, port_of, sim_stats, start_sim
from tests.k8s_double import PODS, POOLS_V1, ApiServerDouble
from tests.k8s_double.objects import pod, pool_v1

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# The rules of the sidecar's Role in manifests/overlays/pd (test_k8s_manifests checks they are).
SIDECAR_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["inference.networking.k8s.io"],
        "resources": ["inferencepools"],
        "verbs": ["list", "watch"],
    },
]
LABELS = {"app": "sim"}


@dataclass
class Rig:
    api: ApiServerDouble
    prefill: str
    decode: str
    rogue: LocalServer
    sidecar: str
    process: ManagedProcess

    def apply_pool(self) -> None:
        self.api.apply(POOLS_V1, pool_v1("pool", LABELS, [port_of(self.prefill), self.rogue.port]))


def pool_pod(name: str, hostport: str, ready: bool = True) -> dict[str, Any]:
    annotations = {ACTIVE_PORTS_ANNOTATION: str(port_of(hostport))}
    return pod(name, "127.0.0.1", labels=LABELS, ready=ready, annotations=annotations)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """The pool holds a Ready prefill pod (the prefill sim) and a not-Ready one (`rogue`, a server
    that answers anything); the sidecar fronts the decode sim."""
    run_dir = tmp_path_factory.mktemp("sidecar-pool")
    async with contextlib.AsyncExitStack() as stack:
        api = ApiServerDouble(rbac=SIDECAR_RULES)
        await api.start()
        stack.push_async_callback(api.stop)
        prefill = await start_sim(stack, run_dir, "prefill")
        decode = await start_sim(stack, run_dir, "decode")
        rogue = LocalServer("answer")
        await rogue.start()
        stack.push_async_callback(rogue.stop)
        ready = run_dir / "sidecar.ready.json"
        argv = epp_command(
            "sidecar", "--host=127.0.0.1", "--port=0", f"--model-server-port={port_of(decode)}",
            "--enable-ssrf-protection=true", "--inference-pool=default/pool", f"--ready-file={ready}",
        )  # fmt: skip
        env = {"KUBECONFIG": str(api.write_kubeconfig(run_dir / "kubeconfig"))}
        process = ManagedProcess("sidecar", argv, run_dir / "sidecar.log", env=env)
        rig = Rig(api, prefill, decode, rogue, "", process)
        rig.apply_pool()
        api.apply(PODS, pool_pod("prefill-0", prefill))
        api.apply(PODS, pool_pod("rogue-0", rogue.hostport, ready=False))
        await process.start()
        stack.push_async_callback(process.stop)
        document = await wait_until(ready_file_probe(ready), "the sidecar", 30, [process])
        rig.sidecar = f"http://127.0.0.1:{document['port']}"
        yield rig


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def prefill_via(rig: Rig, http: aiohttp.ClientSession, target: str) -> tuple[int, Any]:
    headers = {"x-prefiller-host-port": target}
    async with http.post(f"{rig.sidecar}/v1/chat/completions", json=chat(3, target), headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def until_status(rig: Rig, http: aiohttp.ClientSession, target: str, refused: bool, what: str) -> None:
    """Poll until a prefill via `target` is refused (403) or, with refused=False, is not."""

    async def probe() -> bool | None:
        status, _ = await prefill_via(rig, http, target)
        return True if (status == 403) == refused else None

    await wait_until(probe, what, 10, [rig.process], interval=0.1)


async def test_a_ready_pod_of_the_pool_is_prefilled_on(rig: Rig, http: aiohttp.ClientSession) -> None:
    before = await sim_stats(http, rig.prefill)
    status, reply = await prefill_via(rig, http, rig.prefill)
    assert status == 200, reply
    after = await sim_stats(http, rig.prefill)
    assert (after["requests"] - before["requests"], after["prefill_only"] - before["prefill_only"]) == (1, 1)


@pytest.mark.parametrize(
    "which",
    [
        "rogue",  # a pod of the pool that is not Ready
        "decode",  # a pool pod's IP on a port that is not one of its target ports (llm-d-router#979)
        "outside",  # nothing to do with the pool
    ],
)
async def test_other_targets_get_the_ssrf_refusal(rig: Rig, http: aiohttp.ClientSession, which: str) -> None:
    target = {"rogue": rig.rogue.hostport, "decode": rig.decode, "outside": "10.255.0.1:8000"}[which]
    decode_before = await sim_stats(http, rig.decode)
    status, reply = await prefill_via(rig, http, target)
    assert (status, reply["message"]) == (403, SSRF_REFUSED)
    assert rig.rogue.requests == 0
    assert (await sim_stats(http, rig.decode))["requests"] == decode_before["requests"], "not decoded either"


async def test_a_pod_just_made_ready_is_prefilled_on_before_the_watch_tells(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    """The EPP can pick a pod the moment it turns Ready, before the sidecar's own watch has said
    so: the sidecar waits a little for its watch instead of answering 403. Here the watch lags
    0.2 s and the request goes out at once."""
    rig.api.watch_delay = 0.2
    try:
        rig.api.update(PODS, "rogue-0", lambda p: p["status"]["conditions"][0].update(status="True"))
        status, reply = await prefill_via(rig, http, rig.rogue.hostport)
        assert status == 200, reply
        assert rig.rogue.requests == 1
    finally:
        rig.api.watch_delay = 0.0
        rig.api.update(PODS, "rogue-0", lambda p: p["status"]["conditions"][0].update(status="False"))
    await until_status(rig, http, rig.rogue.hostport, refused=True, what="the pod no longer Ready")


async def test_the_allowlist_follows_the_pool_through_the_watch(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    """Changes the pool's state, so it runs last."""
    rig.api.update(PODS, "rogue-0", lambda p: p["status"]["conditions"][0].update(status="True"))
    await until_status(rig, http, rig.rogue.hostport, refused=False, what="the pod that became Ready")
    assert rig.rogue.requests > 0

    rig.api.update(PODS, "prefill-0", lambda p: p["metadata"]["labels"].update(app="elsewhere"))
    await until_status(rig, http, rig.prefill, refused=True, what="the pod that left the pool")
    rig.api.update(PODS, "prefill-0", lambda p: p["metadata"]["labels"].update(LABELS))
    await until_status(rig, http, rig.prefill, refused=False, what="the pod back in the pool")

    rig.api.delete(POOLS_V1, "pool")
    await until_status(rig, http, rig.prefill, refused=True, what="nothing allowed once the pool is deleted")
    assert (await prefill_via(rig, http, rig.rogue.hostport))[0] == 403
    rig.apply_pool()
    await until_status(rig, http, rig.prefill, refused=False, what="the pool created again")
