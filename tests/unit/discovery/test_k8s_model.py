"""Pool, pod and objective objects to spec, endpoints and priorities: the rules GIE applies."""

from __future__ import annotations

from typing import Any

import pytest

from epp.discovery.k8s.model import (
    GROUP_ALPHA,
    GROUP_V1,
    FailureMode,
    PoolRef,
    PoolSpec,
    PoolSpecError,
    objective_priorities,
    parse_pool,
    pod_endpoints,
)
from tests.k8s_double.objects import objective, pod, pool_alpha, pool_v1

POOL = PoolSpec(selector={"app": "vllm"}, target_ports=(8000, 8001))


def test_v1_pool() -> None:
    spec = parse_pool(
        pool_v1("p", {"b": "2", "a": "1"}, [8000, 8001], app_protocol="kubernetes.io/h2c"), GROUP_V1
    )
    assert spec.target_ports == (8000, 8001)
    assert spec.label_selector == "a=1,b=2"
    assert spec.app_protocol == "kubernetes.io/h2c"
    assert spec.failure_mode is FailureMode.FAIL_OPEN
    assert spec.endpoint_picker == "p-epp"


def test_failure_mode_defaults_to_fail_close_as_the_api_does() -> None:
    assert (
        parse_pool(pool_v1("p", {"a": "1"}, [8000], failure_mode=None), GROUP_V1).failure_mode
        is FailureMode.FAIL_CLOSE
    )


def test_v1alpha2_pool() -> None:
    spec = parse_pool(pool_alpha("p", {"app": "vllm"}, 8000), GROUP_ALPHA)
    assert spec == PoolSpec(selector={"app": "vllm"}, target_ports=(8000,), endpoint_picker="p-epp")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"targetPorts": []}, "1 to 8 distinct ports"),
        ({"targetPorts": [{"number": 8000}, {"number": 8000}]}, "distinct"),
        ({"targetPorts": [{"number": p} for p in range(8000, 8009)]}, "1 to 8"),
        ({"targetPorts": [{"number": 70000}]}, "not a port number"),
        ({"targetPorts": [{"number": True}]}, "not a port number"),
        ({"selector": {"matchLabels": {}}}, "non-empty"),
        ({"endpointPickerRef": {"name": "e", "failureMode": "Sometimes"}}, "failureMode"),
    ],
)
def test_unservable_pools_are_refused(change: dict[str, Any], message: str) -> None:
    obj = pool_v1("p", {"a": "1"}, [8000])
    obj["spec"].update(change)
    with pytest.raises(PoolSpecError, match=message):
        parse_pool(obj, GROUP_V1)


def names(obj: dict[str, Any], pool: PoolSpec = POOL) -> list[str]:
    return [e.name for e in pod_endpoints(obj, pool)]


def test_pod_endpoints_per_rank_with_labels_and_namespace() -> None:
    endpoints = pod_endpoints(
        pod("p", "10.0.0.1", labels={"app": "vllm", "llm-d.ai/role": "decode"}, namespace="ns"), POOL
    )
    assert [(e.name, e.hostport, e.namespace) for e in endpoints] == [
        ("p-rank-0", "10.0.0.1:8000", "ns"),
        ("p-rank-1", "10.0.0.1:8001", "ns"),
    ]
    assert endpoints[0].labels["llm-d.ai/role"] == "decode"


def test_model_server_metrics_port_applies_to_single_port_pools_only() -> None:
    """GIE's --model-server-metrics-port: with one target port the pod is scraped there; with
    several, each rank is scraped on its own port."""
    single = PoolSpec(selector={"app": "vllm"}, target_ports=(8000,))
    obj = pod("p", "10.0.0.1", labels={"app": "vllm"})
    (endpoint,) = pod_endpoints(obj, single, metrics_port=9400)
    assert (endpoint.hostport, endpoint.metrics_hostport) == ("10.0.0.1:8000", "10.0.0.1:9400")
    assert [e.metrics_hostport for e in pod_endpoints(obj, POOL, metrics_port=9400)] == [
        "10.0.0.1:8000",
        "10.0.0.1:8001",
    ]
    assert pod_endpoints(obj, single)[0].metrics_hostport == "10.0.0.1:8000"


def test_ipv6_pod_addresses_are_bracketed() -> None:
    assert pod_endpoints(pod("p", "fd00::1", labels={"app": "vllm"}), POOL)[0].hostport == "[fd00::1]:8000"


def test_pod_ips_are_written_as_envoy_writes_them_and_a_non_ip_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Envoy names hosts by canonical IP text, and refuses a whole EDS file holding one address
    that is not an IP (`malformed IP address`, its pool then frozen): a pod whose status.podIP is
    not one is left out, with a warning naming it."""
    assert pod_endpoints(pod("p", "FD00:0::1", labels={"app": "vllm"}), POOL)[0].hostport == "[fd00::1]:8000"
    assert pod_endpoints(pod("evil", "evil.example.com", labels={"app": "vllm"}), POOL) == []
    assert "pod evil: status.podIP 'evil.example.com' is not an IP address" in caplog.text


@pytest.mark.parametrize(
    "obj",
    [
        pod("unready", "10.0.0.1", labels={"app": "vllm"}, ready=False),
        pod("no-ip", None, labels={"app": "vllm"}),
        pod("other", "10.0.0.1", labels={"app": "other"}),
        {
            **pod("terminating", "10.0.0.1", labels={"app": "vllm"}),
            "metadata": {
                "name": "terminating",
                "labels": {"app": "vllm"},
                "deletionTimestamp": "2026-01-01T00:00:00Z",
            },
        },
        {"metadata": {"name": "no-status", "labels": {"app": "vllm"}}},
    ],
)
def test_pods_that_cannot_take_traffic_have_no_endpoints(obj: dict[str, Any]) -> None:
    assert names(obj) == []


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("8001", ["p-rank-1"]),
        (" 8000 , 8001 ", ["p-rank-0", "p-rank-1"]),
        ("8001,9999", ["p-rank-1"]),
        ("9999", ["p-rank-0", "p-rank-1"]),  # names no pool port: ignored, not "drop the pod"
        ("garbage", ["p-rank-0", "p-rank-1"]),
        # Digits Go's strconv.Atoi does not read: str.isdigit took them, then int() raised for
        # "²" on every pool update (the pod list was never published again) and read the
        # fullwidth digits as port 8001.
        ("8000,\u00b2", ["p-rank-0"]),
        ("\uff18\uff10\uff10\uff11", ["p-rank-0", "p-rank-1"]),
    ],
)
def test_active_ports_annotation(annotation: str, expected: list[str]) -> None:
    obj = pod(
        "p",
        "10.0.0.1",
        labels={"app": "vllm"},
        annotations={"inference.networking.k8s.io/active-ports": annotation},
    )
    assert names(obj) == expected


def test_objective_priorities_match_the_pool_by_name_group_and_kind() -> None:
    other_kind = objective("other-kind", "pool", priority=4)
    other_kind["spec"]["poolRef"]["kind"] = "Service"
    objectives = [
        objective("a", "pool", priority=2),
        objective("unset", "pool"),
        objective("not-an-int", "pool", priority="high"),  # type: ignore[arg-type]
        objective("explicit-group", "pool", priority=1, group=GROUP_V1),
        objective("alpha-group", "pool", priority=9, group=GROUP_ALPHA),
        objective("other-pool", "pool-2", priority=9),
        other_kind,
    ]
    assert objective_priorities(objectives, PoolRef("pool")) == {
        "a": 2,
        "unset": 0,
        "not-an-int": 0,
        "explicit-group": 1,
    }
    assert objective_priorities(objectives, PoolRef("pool", group=GROUP_ALPHA)) == {"alpha-group": 9}


def test_pool_ref_rejects_unknown_groups() -> None:
    with pytest.raises(ValueError, match="pool group"):
        PoolRef("p", group="example.com")
