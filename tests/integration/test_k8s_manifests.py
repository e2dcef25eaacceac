"""Every manifest, offline: rendered with `kubectl kustomize`, core objects validated strictly
against the Kubernetes OpenAPI schemas (kubernetes-validate), InferencePool/InferenceObjective
against the CRD schemas, and the cross-references a cluster would only reveal at run time:
selectors, ports, container args (parsed by our own CLI), RBAC (enforced by the API double
while the real discovery runs against the manifests' own pool and objectives)."""

from __future__ import annotations

import asyncio
import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from epp.cli import parse_args
from epp.config.loader import load_config
from epp.datastore import Datastore
from epp.discovery.k8s.client import api_client
from epp.discovery.k8s.elector import LeaderElector
from epp.discovery.k8s.leader import LeaseTiming, lease_name
from epp.discovery.kubernetes import PoolDiscovery, PoolRef
from epp.metrics.auth import MetricsAuth
from epp.sidecar.cli import options_from_args as sidecar_options
from epp.sidecar.hostport import HostPort
from epp.sidecar.options import SidecarOptions
from epp.sidecar.poolsource import PoolSource
from epp.stack.envoy import (
    DEFAULT_ALLOWED_PATHS,
    EPP_HTTP2_OPTIONS,
    EnvoyOptions,
    admission_control_filter,
    admission_control_reply,
    render_bootstrap,
)
from epp.stack.processes import wait_until
from tests.envoy_validate import assert_envoy_accepts
from tests.integration.test_sidecar_pool_e2e import SIDECAR_RULES
from tests.k8s_double import LEASES, PODS, POOLS_V1, SERVICE_ACCOUNT, ApiServerDouble, Resource
from tests.k8s_double.objects import pod
from tests.k8s_double.schemas import crd_files, has_schema, validate_custom_resource

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ["manifests/overlays/aggregated", "manifests/overlays/pd", "manifests/overlays/agentgateway"]
HA = "manifests/overlays/ha"  # aggregated with two leader-electing EPP replicas
ACTIVE = "manifests/overlays/active-active"  # aggregated with three EPP replicas synced through Redis
GATEWAYS = {
    "gateway-api/agentgateway": "agentgateway",
    "gateway-api/envoy-gateway": "envoy-gateway",
    "gateway-api/istio": "istio",
    "gateway-api/kgateway": "kgateway",
}
# Third-party kinds with no schema here (Gateway API, Istio): cross-checked below instead.
UNSCHEMED = {
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "DestinationRule",
    "BackendTrafficPolicy",
    "ClientTrafficPolicy",
}
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: cannot render kustomizations"
)

Doc = dict[str, Any]


def render(directory: str) -> list[Doc]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / directory)], capture_output=True, text=True, check=True
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


ALL = [*OVERLAYS, HA, ACTIVE, *GATEWAYS]
RENDERED = {directory: render(directory) for directory in ALL} if KUBECTL else {}


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(deployment: Doc) -> list[Doc]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def cli_args(container: Doc) -> Any:
    """The container's args parsed by the `epp` CLI itself: an unknown flag fails here."""
    return parse_args(container["args"])


def model_servers(docs: list[Doc]) -> list[Doc]:
    return [d for d in of_kind(docs, "Deployment") if cli_args(containers(d)[0]).command != "serve"]


def epp_deployment(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", "vllm-sim-epp")


@pytest.mark.parametrize("directory", [*OVERLAYS, HA, ACTIVE, *GATEWAYS])
def test_objects_validate_against_their_schemas(directory: str) -> None:
    kinds = set()
    for doc in RENDERED[directory]:
        kinds.add(doc["kind"])
        if has_schema(doc["apiVersion"], doc["kind"]):
            validate_custom_resource(doc)
        elif doc["kind"] not in UNSCHEMED:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert kinds


def test_the_crds_the_tests_validate_with_are_valid_objects() -> None:
    files = crd_files()
    assert {yaml.safe_load(p.read_text())["spec"]["names"]["kind"] for p in files} == {
        "InferencePool",
        "InferenceObjective",
        "InferenceModelRewrite",
        "EnvoyFilter",
        "EnvoyPatchPolicy",
    }
    for path in files:
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), KUBERNETES_VERSION, strict=True)


def test_a_field_the_crd_does_not_know_is_a_validation_error() -> None:
    """The API server would prune it silently; in a manifest of ours it is a typo."""
    pool = copy.deepcopy(one(RENDERED["manifests/overlays/aggregated"], "InferencePool"))
    validate_custom_resource(pool)
    pool["spec"]["targetPort"] = pool["spec"]["targetPorts"]
    with pytest.raises(jsonschema.ValidationError, match=r"\.spec\.targetPort\b"):
        validate_custom_resource(pool)


@pytest.mark.parametrize("directory", OVERLAYS)
def test_the_pool_selects_the_model_servers_and_nothing_else(directory: str) -> None:
    docs = RENDERED[directory]
    selector = one(docs, "InferencePool")["spec"]["selector"]["matchLabels"]
    servers = model_servers(docs)
    assert servers
    for deployment in servers:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    epp_labels = epp_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= epp_labels.items()


def test_pd_pods_carry_both_roles() -> None:
    roles = {
        d["spec"]["template"]["metadata"]["labels"].get("llm-d.ai/role")
        for d in model_servers(RENDERED[OVERLAYS[1]])
    }
    assert roles == {"prefill", "decode"}


@pytest.mark.parametrize("directory", OVERLAYS)
def test_model_servers_listen_on_the_pools_target_port(directory: str) -> None:
    docs = RENDERED[directory]
    (target_port,) = [p["number"] for p in one(docs, "InferencePool")["spec"]["targetPorts"]]
    for deployment in model_servers(docs):
        front, *behind = containers(deployment)
        args = cli_args(front)
        assert args.port == target_port
        assert args.host == "0.0.0.0"
        assert any(p["containerPort"] == target_port for p in front["ports"])
        if args.command == "sidecar":
            (engine,) = behind
            engine_args = cli_args(engine)
            assert (engine_args.command, engine_args.port) == ("sim", args.model_server_port)
            assert engine_args.host == args.model_server_host == "127.0.0.1"
            assert engine_args.role == "decode"
        else:
            assert behind == []


def kubelet_args(container: Doc, namespace: str = "default") -> list[str]:
    """The container's args as the kubelet passes them: `$(VAR)` expanded from the container's env,
    its downward-API fields resolved for a pod in `namespace`."""
    fields = {"metadata.namespace": namespace}
    env = {
        e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container.get("env", [])
    }
    return [
        re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg) for arg in container["args"]
    ]


def pd_sidecar(docs: list[Doc]) -> tuple[Doc, SidecarOptions]:
    """The decode pods' spec and their routing sidecar's options, as the kubelet would start it."""
    decode = one(docs, "Deployment", "vllm-sim-decode")["spec"]["template"]["spec"]
    return decode, sidecar_options(parse_args(kubelet_args(decode["containers"][0])))


def test_the_pd_sidecar_guards_prefill_targets_with_the_pool() -> None:
    docs = RENDERED[OVERLAYS[1]]
    decode, options = pd_sidecar(docs)
    pool = one(docs, "InferencePool")
    assert options.ssrf_protection
    assert options.pool == PoolRef(pool["metadata"]["name"], "default", pool["apiVersion"].split("/")[0])
    in_team = sidecar_options(parse_args(kubelet_args(decode["containers"][0], namespace="team"))).pool
    assert in_team is not None and in_team.namespace == "team", "the pool of the pod's own namespace"


async def test_the_sidecars_role_is_enough_for_its_pool_watch(tmp_path: Path) -> None:
    """Under the Role bound to the decode pods' service account, the sidecar's own allowlist
    source syncs on the manifests' pool and allows exactly its pods, on its target port."""
    docs = RENDERED[OVERLAYS[1]]
    decode, options = pd_sidecar(docs)
    account = decode["serviceAccountName"]
    assert one(docs, "ServiceAccount", account) and decode.get("automountServiceAccountToken", True)
    (binding,) = [b for b in of_kind(docs, "RoleBinding") if b["subjects"][0]["name"] == account]
    role = one(docs, "Role", binding["roleRef"]["name"])
    assert role["rules"] == SIDECAR_RULES, "the rules the sidecar's end-to-end test runs under"
    api = ApiServerDouble(rbac=role["rules"])
    await api.start()
    assert options.pool is not None
    source = PoolSource(options.pool, api.write_kubeconfig(tmp_path / "kc"), sync_timeout=10)
    try:
        api.apply(POOLS_V1, one(docs, "InferencePool"))
        for index, deployment in enumerate(model_servers(docs)):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            api.apply(PODS, pod(f"server-{index}", f"10.0.0.{index + 1}", labels=labels))
        api.apply(PODS, pod("other", "10.0.0.9", labels={"app": "other"}))
        await source.start()
        allowed = {f"10.0.0.{index + 1}:8000" for index in range(len(model_servers(docs)))}
        assert {t for t in ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.9:8000", "10.0.0.1:8200"]
                if source.allowlist.allows(HostPort.parse(t))} == allowed  # fmt: skip
    finally:
        await source.stop()
        await api.stop()


@pytest.mark.parametrize("directory", OVERLAYS)
def test_epp_ports_line_up(directory: str) -> None:
    docs = RENDERED[directory]
    deployment = epp_deployment(docs)
    (container,) = containers(deployment)
    # GIE's chart convention: no command, flags only (the image's entrypoint serves).
    assert "command" not in container
    assert container["args"][0].startswith("--")
    args = cli_args(container)
    assert args.command == "serve"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": args.grpc_port,
        "grpc-health": args.grpc_health_port,
        "metrics": args.metrics_port,
    }
    assert container["readinessProbe"]["grpc"] == {
        "port": args.grpc_health_port,
        "service": "inference-extension",
    }
    assert container["livenessProbe"]["grpc"]["port"] == args.grpc_health_port

    service = one(docs, "Service", "vllm-sim-epp")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports[service_ports["grpc-ext-proc"]["targetPort"]] == args.grpc_port
    assert ports[service_ports["http-metrics"]["targetPort"]] == args.metrics_port

    pool = one(docs, "InferencePool")
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == service["metadata"]["name"]
    assert ref["port"]["number"] == service_ports["grpc-ext-proc"]["port"]
    assert (args.pool_name, args.pool_group) == (pool["metadata"]["name"], pool["apiVersion"].split("/")[0])


@pytest.mark.parametrize("directory", OVERLAYS)
def test_the_epp_config_is_mounted_where_the_args_say_and_loads(directory: str) -> None:
    docs = RENDERED[directory]
    template = epp_deployment(docs)["spec"]["template"]["spec"]
    args = cli_args(template["containers"][0])
    mount = next(
        m
        for m in template["containers"][0]["volumeMounts"]
        if args.config_file.is_relative_to(m["mountPath"])
    )
    volume = next(v for v in template["volumes"] if v["name"] == mount["name"])
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    config = load_config(config_map["data"][args.config_file.name])  # the EPP's own strict loader
    expected = {"prefill", "decode"} if directory.endswith("pd") else {"default"}
    assert {profile.name for profile in config.profiles} == expected


def test_rbac_binds_the_epps_service_account() -> None:
    docs = RENDERED[OVERLAYS[0]]
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "Role")["metadata"]["name"]
    (subject,) = binding["subjects"]
    account = epp_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account)
    assert one(docs, "ServiceAccount", account)


def resource_of(doc: Doc) -> Resource:
    group, version = doc["apiVersion"].split("/")
    return Resource(group, version, f"{doc['kind'].lower()}s", doc["kind"])


async def test_the_role_is_enough_for_discovery_of_the_manifests_pool(tmp_path: Path) -> None:
    """The real discovery, under the Role's rules, finds the manifests' pool and objectives, and
    may watch model rewrites."""
    docs = RENDERED[OVERLAYS[0]]
    api = ApiServerDouble(rbac=one(docs, "Role")["rules"])
    await api.start()
    datastore = Datastore()
    objectives: dict[str, int] = {}
    rewrites: list[object] = []
    pool = one(docs, "InferencePool")
    discovery = PoolDiscovery(
        PoolRef(pool["metadata"]["name"]),
        datastore,
        objectives.update,
        api.write_kubeconfig(tmp_path / "kc"),
        on_model_rewrites=rewrites.append,
    )
    try:
        for doc in [pool, *of_kind(docs, "InferenceObjective")]:
            api.apply(resource_of(doc), doc)
        labels = model_servers(docs)[0]["spec"]["template"]["metadata"]["labels"]
        api.apply(PODS, pod("vllm-sim-0", "10.0.0.1", labels=labels))
        await discovery.start()

        async def synced() -> bool | None:
            # Listed, and watching all four collections (a Role without `watch` stops here).
            return True if datastore.synced and objectives and rewrites and api.open_watches == 4 else None

        await wait_until(synced, "discovery under the Role's rules", 10)
        assert [e.hostport for e in datastore.endpoints()] == ["10.0.0.1:8000"]
        assert objectives == {"interactive": 10, "batch": -1}
    finally:
        await discovery.stop()
        await api.stop()


def test_the_epp_may_review_metrics_callers_cluster_wide() -> None:
    docs = RENDERED[OVERLAYS[0]]
    assert cli_args(containers(epp_deployment(docs))[0]).metrics_endpoint_auth is None  # GIE's default: on
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["name"], subject["namespace"]) == (
        "ServiceAccount",
        "vllm-sim-epp",
        "default",
    )


async def test_the_cluster_role_is_enough_for_metrics_auth(tmp_path: Path) -> None:
    """Under the ClusterRole's rules the EPP's reviews go through, and its own service account
    (bound to the ClusterRole's nonResourceURLs rule) may read /metrics."""
    docs = RENDERED[OVERLAYS[0]]
    rules = one(docs, "ClusterRole")["rules"]
    api = ApiServerDouble(rbac=rules)
    await api.start()
    (subject,) = one(docs, "ClusterRoleBinding")["subjects"]
    assert f"system:serviceaccount:{subject['namespace']}:{subject['name']}" == SERVICE_ACCOUNT
    for rule in rules:
        for url in rule.get("nonResourceURLs", []):
            for verb in rule["verbs"]:
                api.grant(SERVICE_ACCOUNT, verb, url)
    client = await api_client(api.write_kubeconfig(tmp_path / "kc"))
    try:
        auth = MetricsAuth(client)
        user = await auth.authenticate("double-token")
        assert user is not None and user.username == SERVICE_ACCOUNT
        assert await auth.authorize(user, "get", "/metrics")
    finally:
        await client.close()
        await api.stop()


def test_the_ha_overlay_runs_two_leader_electing_replicas() -> None:
    deployment = epp_deployment(RENDERED[HA])
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = containers(deployment)
    assert cli_args(container).ha_enable_leader_election is True
    assert container["readinessProbe"]["grpc"]["service"] == "readiness"
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"


def test_the_active_active_overlay_syncs_replicas_through_its_redis() -> None:
    docs = RENDERED[ACTIVE]
    deployment = epp_deployment(docs)
    assert deployment["spec"]["replicas"] == 3
    (container,) = containers(deployment)
    url = urlsplit(cli_args(container).replica_sync)
    assert url.scheme == "redis"
    (service,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == url.hostname]
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]
    (redis,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == url.hostname]
    labels = redis["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert containers(redis)[0]["ports"][0]["containerPort"] == 6379


async def test_the_ha_roles_are_enough_for_leader_election(tmp_path: Path) -> None:
    docs = RENDERED[HA]
    account = epp_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {role["metadata"]["name"]: role["rules"] for role in of_kind(docs, "Role")}
    bound = [
        b["roleRef"]["name"] for b in of_kind(docs, "RoleBinding") if b["subjects"][0]["name"] == account
    ]
    api = ApiServerDouble(rbac=[rule for name in bound for rule in roles[name]])
    await api.start()
    client = await api_client(api.write_kubeconfig(tmp_path / "kc"))
    pool = PoolRef(one(docs, "InferencePool")["metadata"]["name"])
    timing = LeaseTiming(lease_duration=1, renew_deadline=0.5, retry_period=0.05)
    elector = LeaderElector(client, lease_name(pool), pool.namespace, "a", timing)
    elector.start()
    try:
        await asyncio.wait_for(elector.elected.wait(), 10)
        await elector.stop()  # and release: update after get
        assert api.get(LEASES, lease_name(pool))["spec"]["holderIdentity"] == ""
    finally:
        await elector.stop()
        await client.close()
        await api.stop()


@pytest.mark.parametrize(("directory", "gateway_class"), GATEWAYS.items())
def test_routes_send_the_gateway_to_the_pool(directory: str, gateway_class: str) -> None:
    docs = RENDERED[directory]
    pool = one(RENDERED[OVERLAYS[0]], "InferencePool")
    gateway = one(docs, "Gateway")
    assert gateway["spec"]["gatewayClassName"] == gateway_class
    (rule,) = one(docs, "HTTPRoute")["spec"]["rules"]
    (backend,) = rule["backendRefs"]
    assert backend == {
        "group": "inference.networking.k8s.io",
        "kind": "InferencePool",
        "name": pool["metadata"]["name"],
    }
    (parent,) = one(docs, "HTTPRoute")["spec"]["parentRefs"]
    assert (parent["kind"], parent["name"]) == ("Gateway", gateway["metadata"]["name"])
    classes = of_kind(docs, "GatewayClass")
    assert all(c["metadata"]["name"] == gateway_class for c in classes)
    # The same path policy as the standalone bootstrap: the OpenAI API paths only, never `/`.
    matches = [m["path"] for m in rule["matches"]]
    assert matches == [{"type": "PathPrefix", "value": path} for path in DEFAULT_ALLOWED_PATHS]


def test_istio_originates_tls_to_the_epp() -> None:
    rule = one(RENDERED["gateway-api/istio"], "DestinationRule")
    service = one(RENDERED[OVERLAYS[0]], "Service", "vllm-sim-epp")
    # A short name: Istio reads it in the rule's own namespace, so it follows `kubectl -n`.
    assert rule["spec"]["host"] == service["metadata"]["name"]
    assert rule["spec"]["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "insecureSkipVerify": True}
    assert cli_args(containers(epp_deployment(RENDERED[OVERLAYS[0]]))[0]).secure_serving is True


def test_agentgateway_reaches_the_epp_in_plaintext() -> None:
    overlay = RENDERED["manifests/overlays/agentgateway"]
    assert cli_args(containers(epp_deployment(overlay))[0]).secure_serving is False
    assert not of_kind(RENDERED["gateway-api/agentgateway"], "DestinationRule")


def test_the_standalone_envoy_bootstrap_is_the_rendered_one() -> None:
    checked_in = yaml.safe_load((ROOT / "gateway-api/envoy-standalone.yaml").read_text())
    assert checked_in == render_bootstrap(EnvoyOptions())


def test_the_gateways_admission_control_patches_are_the_bootstraps() -> None:
    """Opt-in files, outside the kustomizations: the same filter, first in the chain (before the
    ext_proc filter), and the same JSON 429, as `epp run --admission-control 2`."""
    rendered = admission_control_filter(EnvoyOptions(admission_control_aggression=2))
    (istio,) = yaml.safe_load_all((ROOT / "gateway-api/istio/admission-control.yaml").read_text())
    first, replies = istio["spec"]["configPatches"]
    assert (first["applyTo"], first["patch"]["operation"]) == ("HTTP_FILTER", "INSERT_FIRST")
    assert first["patch"]["value"] == rendered
    assert replies["patch"]["value"]["typed_config"]["local_reply_config"] == {
        "mappers": [admission_control_reply()]
    }
    (envoy_gateway,) = yaml.safe_load_all(
        (ROOT / "gateway-api/envoy-gateway/admission-control.yaml").read_text()
    )
    inserted, reply = (p["operation"] for p in envoy_gateway["spec"]["jsonPatches"])
    assert inserted["path"].endswith("/http_filters/0") and inserted["value"] == rendered
    assert reply["value"] == {"mappers": [admission_control_reply()]}
    for spec in (istio["spec"]["targetRefs"][0], envoy_gateway["spec"]["targetRef"]):
        assert spec["name"] == one(RENDERED["gateway-api/istio"], "Gateway")["metadata"]["name"]


ISTIO_PATCHES = ("gateway-api/istio/admission-control.yaml", "gateway-api/istio/epp-http2-limits.yaml")
PATCHES = (*ISTIO_PATCHES, "gateway-api/envoy-gateway/admission-control.yaml")
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def manifest(path: str) -> Doc:
    (doc,) = yaml.safe_load_all((ROOT / path).read_text())
    return dict(doc)


@pytest.mark.parametrize("path", PATCHES)
def test_the_gateway_patches_validate_against_their_gateways_crd(path: str) -> None:
    validate_custom_resource(manifest(path))


def istio_epp_cluster_patch() -> Doc:
    (patch,) = manifest(ISTIO_PATCHES[1])["spec"]["configPatches"]
    return dict(patch)


def test_the_istio_epp_patch_sets_the_bootstraps_http2_limits_on_the_epps_cluster() -> None:
    """Istio's ext_proc for a pool calls outbound|<port>||<EPP Service FQDN>: matched by the
    pool's endpointPickerRef (service, port), on the Gateway, with `epp run`'s values."""
    doc = manifest(ISTIO_PATCHES[1])
    patch = istio_epp_cluster_patch()
    assert (patch["applyTo"], patch["match"]["context"], patch["patch"]["operation"]) == (
        "CLUSTER",
        "GATEWAY",
        "MERGE",
    )
    ref = one(RENDERED[OVERLAYS[0]], "InferencePool")["spec"]["endpointPickerRef"]
    service = one(RENDERED[OVERLAYS[0]], "Service", ref["name"])
    assert ref["port"]["number"] in [port["port"] for port in service["spec"]["ports"]]
    assert patch["match"]["cluster"] == {
        "service": f"{ref['name']}.default.svc.cluster.local",
        "portNumber": ref["port"]["number"],
    }
    options = patch["patch"]["value"]["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert options["explicit_http_config"]["http2_protocol_options"] == EPP_HTTP2_OPTIONS
    (target,) = doc["spec"]["targetRefs"]
    assert target["name"] == one(RENDERED["gateway-api/istio"], "Gateway")["metadata"]["name"]


def test_envoy_accepts_the_epp_cluster_as_the_istio_patch_leaves_it(tmp_path: Path) -> None:
    """The cluster as Istio builds it for an HTTP/2 Service port (explicit HTTP/2, no options),
    then the patch's MERGE, which replaces a typed_extension_protocol_options entry whole."""
    name = "outbound|9002||vllm-sim-epp.default.svc.cluster.local"
    cluster: Doc = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9002}}
                            }
                        }
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    cluster["typed_extension_protocol_options"].update(
        istio_epp_cluster_patch()["patch"]["value"]["typed_extension_protocol_options"]
    )
    assert_envoy_accepts({"static_resources": {"clusters": [cluster]}}, tmp_path)


def pod_specs() -> Iterator[Doc]:
    for directory in OVERLAYS:
        for deployment in of_kind(RENDERED[directory], "Deployment"):
            yield deployment["spec"]["template"]["spec"]


def test_every_pod_runs_as_the_images_non_root_user_on_a_read_only_root() -> None:
    user = next(
        line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")
    )
    uid = int(user.split(":")[0])
    for spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["image"] == "epp:dev"


def test_gateways_set_envoys_limits_deliberately() -> None:
    """Envoy's default circuit breaker (1,024) must not be what limits a gateway of long streams."""
    pool = one(RENDERED["gateway-api/istio"], "DestinationRule")["spec"]["trafficPolicy"]["connectionPool"]
    assert pool["http"]["http2MaxRequests"] >= 10_000 and pool["tcp"]["maxConnections"] >= 10_000
    backend = one(RENDERED["gateway-api/envoy-gateway"], "BackendTrafficPolicy")["spec"]
    assert (
        backend["targetRefs"][0]["name"]
        == one(RENDERED["gateway-api/envoy-gateway"], "HTTPRoute")["metadata"]["name"]
    )
    assert min(backend["circuitBreaker"].values()) >= 10_000
    client = one(RENDERED["gateway-api/envoy-gateway"], "ClientTrafficPolicy")["spec"]
    assert (
        client["targetRefs"][0]["name"]
        == one(RENDERED["gateway-api/envoy-gateway"], "Gateway")["metadata"]["name"]
    )
    standalone = render_bootstrap(EnvoyOptions())
    for cluster in standalone["static_resources"]["clusters"]:
        (threshold,) = cluster["circuit_breakers"]["thresholds"]
        assert threshold["max_requests"] >= 10_000, cluster["name"]
