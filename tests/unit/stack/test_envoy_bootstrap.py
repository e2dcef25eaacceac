"""The generated Envoy bootstrap: modes, failure handling, and Envoy's own validation of it."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.cli import build_parser
from epp.discovery.eds import eds_document
from epp.requests import ApiKind
from epp.requests.parser import api_kind
from epp.stack.cli import _epp_args, envoy_options
from epp.stack.envoy import (
    DEFAULT_ALLOWED_PATHS,
    EXT_PROC_FILTER,
    LIMIT_HEADER,
    LIMIT_MESSAGES,
    PROTOCOL_ERROR_HEADER,
    EnvoyOptions,
    check_path_prefix,
    render_bootstrap,
)
from epp.tls import Authority
from tests.envoy_validate import assert_envoy_accepts


def manager(bootstrap: dict[str, Any], listener: int = 0) -> dict[str, Any]:
    config: dict[str, Any] = bootstrap["static_resources"]["listeners"][listener]["filter_chains"][0]
    return dict(config["filters"][0]["typed_config"])


def routes(options: EnvoyOptions, listener: int = 0) -> list[dict[str, Any]]:
    return list(manager(render_bootstrap(options), listener)["route_config"]["virtual_hosts"][0]["routes"])


def ext_proc_config(bootstrap: dict[str, Any]) -> dict[str, Any]:
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}
    return filters["envoy.filters.http.ext_proc"]["extension_config"]["typed_config"]


def test_ext_proc_skips_envoys_reply_to_an_http1_protocol_error() -> None:
    """Envoy's codec answers a body that breaks the framing after routing with a 400 and closes the
    connection at once: ext_proc must not hold that reply for the EPP's answer about its headers."""
    bootstrap = render_bootstrap(EnvoyOptions())
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wrapped = {f["name"]: f["typed_config"] for f in manager["http_filters"]}[EXT_PROC_FILTER]
    (matcher,) = wrapped["xds_matcher"]["matcher_list"]["matchers"]
    header = matcher["predicate"]["single_predicate"]["input"]["typed_config"]["header_name"]
    assert header == PROTOCOL_ERROR_HEADER
    first = manager["local_reply_config"]["mappers"][0]
    assert "startsWith('http1.')" in str(first["filter"])
    assert first["headers_to_add"][0]["header"] == {"key": PROTOCOL_ERROR_HEADER, "value": "true"}


def test_full_duplex_is_gies_contract() -> None:
    config = ext_proc_config(render_bootstrap(EnvoyOptions(body_mode="full-duplex")))
    assert config["processing_mode"]["request_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert config["processing_mode"]["response_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert config["processing_mode"]["request_trailer_mode"] == "SEND"
    assert config["failure_mode_allow"] is False
    assert config["metadata_options"]["receiving_namespaces"]["untyped"] == ["envoy.lb"]


def test_pool_cluster_keys_on_metadata_not_on_the_forgeable_header() -> None:
    options = EnvoyOptions(pool_eds_path=None)  # ORIGINAL_DST, for an EPP that keeps no EDS file
    clusters = {c["name"]: c for c in render_bootstrap(options)["static_resources"]["clusters"]}
    lb = clusters["pool"]["original_dst_lb_config"]
    assert lb == {"metadata_key": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}


def first_path_routes(options: EnvoyOptions) -> list[dict[str, Any]]:
    """The routes of the first allowed path; the served endpoint is reported on every response."""
    (host,) = manager(render_bootstrap(options))["route_config"]["virtual_hosts"]
    assert host["response_headers_to_add"] == [
        {
            "header": {"key": "x-gateway-destination-endpoint-served", "value": "%UPSTREAM_HOST%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    return list(host["routes"][:3])


def test_the_pool_from_an_eds_file_routes_on_the_epps_list_with_override_host() -> None:
    bootstrap = render_bootstrap(EnvoyOptions(pool_eds_path="/run/pool/endpoints.yaml"))
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    pool = clusters["pool"]
    assert pool["type"] == "EDS"
    assert pool["eds_cluster_config"]["eds_config"]["path_config_source"] == {
        "path": "/run/pool/endpoints.yaml",
        "watched_directory": {"path": "/run/pool"},
    }
    # Envoy's default (3 retries in flight per cluster) fails most retries when a busy pod dies.
    assert pool["circuit_breakers"]["thresholds"][0]["max_retries"] >= 1024
    (policy,) = pool["load_balancing_policy"]["policies"]
    override = policy["typed_extension_config"]
    assert override["name"] == "envoy.load_balancing_policies.override_host"
    assert override["typed_config"]["override_host_sources"] == [
        {"metadata": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}
    ]


def test_retries_go_to_another_host_and_only_streams_get_a_first_byte_bound() -> None:
    options = EnvoyOptions(
        retries=3, first_byte_timeout="7s", stream_idle_timeout="20s", response_timeout="99s"
    )
    streaming, whole, fallback = first_path_routes(options)
    keys = [[m["path"][0]["key"] for m in r["match"]["dynamic_metadata"]] for r in (streaming, whole)]
    assert keys == [["x-gateway-destination-endpoint", "x-epp-streaming"], ["x-gateway-destination-endpoint"]]
    for route in (streaming, whole):
        retry = route["route"]["retry_policy"]
        assert retry["num_retries"] == 3
        assert set(retry["retry_on"].split(",")) >= {"connect-failure", "reset", "retriable-status-codes"}
        assert retry["retriable_status_codes"] == [503]
        (predicate,) = retry["retry_host_predicate"]
        assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert streaming["route"]["retry_policy"]["per_try_timeout"] == "7s"
    assert (streaming["route"]["timeout"], streaming["route"]["idle_timeout"]) == ("0s", "20s")
    assert "per_try_timeout" not in whole["route"]["retry_policy"]
    assert (whole["route"]["timeout"], whole["route"]["idle_timeout"]) == ("99s", "99s")
    assert fallback["direct_response"]["status"] == 503


def test_buffered_mode_fails_open_so_a_routed_response_outlives_the_epp() -> None:
    assert ext_proc_config(render_bootstrap(EnvoyOptions()))["failure_mode_allow"] is True


def epp_transport(options: EnvoyOptions) -> dict[str, Any]:
    clusters = {c["name"]: c for c in render_bootstrap(options)["static_resources"]["clusters"]}
    return dict(clusters["epp"]["transport_socket"]["typed_config"])


def test_the_epp_certificate_is_verified_and_a_client_certificate_presented_when_given() -> None:
    assert epp_transport(EnvoyOptions())["common_tls_context"] == {"alpn_protocols": ["h2"]}  # as GIE
    options = EnvoyOptions(
        epp_ca_path="/tls/ca.crt",
        epp_san="epp.ns.svc",
        client_cert_path="/tls/c.crt",
        client_key_path="/tls/c.key",
    )
    tls = epp_transport(options)
    assert tls["sni"] == "epp.ns.svc"
    context = tls["common_tls_context"]
    assert context["validation_context"] == {
        "trusted_ca": {"filename": "/tls/ca.crt"},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "epp.ns.svc"}}],
    }
    assert context["tls_certificates"] == [
        {"certificate_chain": {"filename": "/tls/c.crt"}, "private_key": {"filename": "/tls/c.key"}}
    ]
    with pytest.raises(ValueError, match="go together"):
        EnvoyOptions(client_cert_path="/tls/c.crt")
    with pytest.raises(ValueError, match="needs epp_tls"):
        EnvoyOptions(epp_tls=False, epp_ca_path="/tls/ca.crt")


def test_fail_open_needs_buffered_mode_and_fallback_endpoints() -> None:
    with pytest.raises(ValueError, match="use body mode 'buffered' for fail-open"):
        EnvoyOptions(body_mode="full-duplex", failure_mode="open", fallback_endpoints=("a:1",))
    with pytest.raises(ValueError, match="needs fallback_endpoints"):
        render_bootstrap(EnvoyOptions(body_mode="buffered", failure_mode="open"))
    with pytest.raises(ValueError, match="body_mode must be one of"):
        EnvoyOptions(body_mode="streamed")
    open_config = render_bootstrap(
        EnvoyOptions(body_mode="buffered", failure_mode="open", fallback_endpoints=("127.0.0.1:8000",))
    )
    assert ext_proc_config(open_config)["failure_mode_allow"] is True
    names = [c["name"] for c in open_config["static_resources"]["clusters"]]
    assert names == ["epp", "pool", "pool_fallback"]


@pytest.mark.parametrize(
    "options",
    [
        EnvoyOptions(),
        EnvoyOptions(body_mode="buffered", epp_tls=True),
        EnvoyOptions(
            body_mode="buffered", failure_mode="open", fallback_endpoints=("127.0.0.1:8000", "[::1]:8001")
        ),
        EnvoyOptions(allowed_paths=("/",), baseline_port=0, fallback_endpoints=("127.0.0.1:8000",)),
        EnvoyOptions(allowed_paths=("/v1/rerank",), baseline_port=0, fallback_endpoints=("127.0.0.1:8000",)),
        EnvoyOptions(body_mode="full-duplex", pool_eds_path=None),
        EnvoyOptions(epp_ca_path="ca.crt", client_cert_path="c.crt", client_key_path="c.key"),
        EnvoyOptions(epp_extra_ports=(9004,), epp_connections=2),
        EnvoyOptions(adaptive_concurrency=True),
        EnvoyOptions(adaptive_concurrency=True, rate_limit=100, body_mode="full-duplex"),
        EnvoyOptions(adaptive_concurrency=True, adaptive_concurrency_latency="0.1s"),
        EnvoyOptions(admission_control_aggression=3, rate_limit=100),
        EnvoyOptions(quota_from_epp=True),
        EnvoyOptions(quota_from_epp=True, admission_control_aggression=2, body_mode="full-duplex"),
        EnvoyOptions(quota_from_epp=True, quota_objectives=("chat", "batch", "a.b-c")),
    ],
)
def test_envoy_accepts_every_variant(options: EnvoyOptions, tmp_path: Path) -> None:
    if options.pool_eds_path is not None:  # Envoy refuses a path that does not exist
        eds = tmp_path / options.pool_eds_path  # relative: Envoy runs in tmp_path
        eds.parent.mkdir()
        eds.write_text(yaml.safe_dump(eds_document(["127.0.0.1:8000"])))
    if options.epp_ca_path is not None:  # and the certificate files
        authority = Authority()
        key, cert = authority.issue("gateway", client=True)
        (tmp_path / "ca.crt").write_bytes(authority.certificate_pem)
        (tmp_path / "c.crt").write_bytes(cert)
        (tmp_path / "c.key").write_bytes(key)
        options = replace(
            options,
            epp_ca_path=str(tmp_path / "ca.crt"),
            client_cert_path=str(tmp_path / "c.crt"),
            client_key_path=str(tmp_path / "c.key"),
        )
    assert_envoy_accepts(render_bootstrap(options), tmp_path)


def test_buffered_is_the_default_and_lets_the_epp_skip_streamed_bodies() -> None:
    config = ext_proc_config(render_bootstrap(EnvoyOptions()))
    assert config["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert config["processing_mode"]["response_body_mode"] == "STREAMED"
    assert config["allow_mode_override"] is True


def test_the_default_paths_are_every_api_the_parser_knows_and_the_model_list() -> None:
    kinds = {api_kind(path) for path in DEFAULT_ALLOWED_PATHS}
    assert kinds == set(ApiKind)  # /v1/models is OTHER
    assert "/v1/models" in DEFAULT_ALLOWED_PATHS


def test_only_allowed_paths_are_routed_and_the_rest_is_a_404_without_the_epp() -> None:
    table = routes(EnvoyOptions())
    matched = [r["match"].get("path_separated_prefix") for r in table[:-1]]
    assert matched == [p for p in DEFAULT_ALLOWED_PATHS for _ in ("streaming", "whole", "fallback")]
    *_, last = table
    assert last["match"] == {"prefix": "/"}
    assert last["direct_response"]["status"] == 404
    assert "/v1/chat/completions" in last["direct_response"]["body"]["inline_string"]
    assert last["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["disabled"] is True
    hcm = manager(render_bootstrap(EnvoyOptions()))
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True


@pytest.mark.parametrize("options", [EnvoyOptions(), EnvoyOptions(rate_limit=10, adaptive_concurrency=True)])
def test_ext_proc_runs_only_where_a_route_matched(options: EnvoyOptions) -> None:
    """Off in the chain, on for the virtual host: a request refused before routing (Envoy's 400 or
    431 for a malformed request) never waits for the EPP, which lost its reply."""
    hcm = manager(render_bootstrap(options))
    (ext_proc,) = [f for f in hcm["http_filters"] if f["name"] == EXT_PROC_FILTER]
    assert ext_proc["disabled"] is True
    (host,) = hcm["route_config"]["virtual_hosts"]
    enabled = host["typed_per_filter_config"][EXT_PROC_FILTER]
    assert enabled["@type"].endswith("route.v3.FilterConfig") and not enabled.get("disabled")


def test_a_slash_routes_every_path_and_the_baseline_listener_follows_the_policy() -> None:
    everything = EnvoyOptions(allowed_paths=(*DEFAULT_ALLOWED_PATHS, "/"))
    assert everything.allowed_paths == ("/",)
    assert [r["match"]["prefix"] for r in routes(everything)] == ["/", "/", "/"]
    baseline = EnvoyOptions(
        allowed_paths=("/v1/rerank",), baseline_port=0, fallback_endpoints=("127.0.0.1:1",)
    )
    table = routes(baseline, listener=1)
    assert [r["match"] for r in table] == [{"path_separated_prefix": "/v1/rerank"}, {"prefix": "/"}]
    assert table[0]["route"]["cluster"] == "pool_fallback"
    assert table[1]["direct_response"]["status"] == 404 and "typed_per_filter_config" not in table[1]


@pytest.mark.parametrize(
    ("given", "expected"),
    [("/v1/rerank", "/v1/rerank"), ("/v1/rerank/", "/v1/rerank"), ("//tokenize", "/tokenize"), ("/", "/")],
)
def test_allowed_paths_are_normalised_as_envoy_normalises_requests(given: str, expected: str) -> None:
    assert check_path_prefix(given) == expected


@pytest.mark.parametrize("bad", ["v1/rerank", "/v1/x?y", "/a b", "/v1/../metrics", "/v1/*", ""])
def test_bad_allowed_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed path"):
        EnvoyOptions(allowed_paths=(bad,))
    with pytest.raises(ValueError, match="empty"):
        EnvoyOptions(allowed_paths=())


def test_epp_run_sets_retries_and_timeouts() -> None:
    defaults = envoy_options(build_parser("run").parse_args(["run"]))
    assert (defaults.retries, defaults.first_byte_timeout, defaults.response_timeout) == (2, "30s", "300s")
    argv = [
        "run",
        "--retries=1",
        "--first-byte-timeout=2.5",
        "--stream-idle-timeout=20",
        "--response-timeout=600",
    ]
    options = envoy_options(build_parser("run").parse_args(argv))
    assert (options.retries, options.first_byte_timeout, options.stream_idle_timeout) == (1, "2.5s", "20s")
    assert options.response_timeout == "600s"
    for bad in (["--first-byte-timeout=0"], ["--response-timeout=soon"], ["--retries=11"]):
        with pytest.raises(SystemExit):
            build_parser("run").parse_args(["run", *bad])


def test_epp_run_refuses_a_gateway_port_past_65535(capsys: pytest.CaptureFixture[str]) -> None:
    """It reached Envoy, whose answer was a page of proto validation errors."""
    with pytest.raises(SystemExit):
        build_parser("run").parse_args(["run", "--port=99999"])
    assert "'99999' is not a port number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", [["--sims=0"], ["--sims=-3"], ["--workers=0"], ["--pd", "0", "2"], ["--pd", "1", "-1"]]
)
def test_epp_run_refuses_fewer_than_one_process(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser("run").parse_args(["run", *bad])
    assert "expected at least 1, not " in capsys.readouterr().err


def test_epp_run_allow_path_adds_to_the_defaults() -> None:
    args = build_parser("run").parse_args(["run", "--allow-path", "/v1/rerank/", "--allow-path", "/tokenize"])
    assert envoy_options(args).allowed_paths == (*DEFAULT_ALLOWED_PATHS, "/v1/rerank", "/tokenize")
    with pytest.raises(SystemExit):
        build_parser("run").parse_args(["run", "--allow-path", "metrics"])


def test_several_epp_hosts_are_health_checked_and_ejected_when_dead() -> None:
    (single,) = [
        c for c in render_bootstrap(EnvoyOptions())["static_resources"]["clusters"] if c["name"] == "epp"
    ]
    assert "health_checks" not in single and "outlier_detection" not in single
    options = EnvoyOptions(epp_port=9002, epp_extra_ports=(9004,), epp_connections=2)
    (epp,) = [c for c in render_bootstrap(options)["static_resources"]["clusters"] if c["name"] == "epp"]
    hosts = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in epp["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert hosts == [9002, 9002, 9004, 9004]  # two connections to each replica
    (check,) = epp["health_checks"]
    assert "grpc_health_check" in check and check["no_traffic_interval"] == "0.5s"
    assert epp["outlier_detection"]["consecutive_local_origin_failure"] == 2


def filter_names(options: EnvoyOptions) -> list[str]:
    return [f["name"] for f in manager(render_bootstrap(options))["http_filters"]]


def test_the_gateways_limits_come_before_ext_proc_which_skips_their_refusals() -> None:
    router = "envoy.filters.http.router"
    assert filter_names(EnvoyOptions()) == [EXT_PROC_FILTER, router]
    assert "adaptive_concurrency" not in str(render_bootstrap(EnvoyOptions()))  # off by default
    both = EnvoyOptions(adaptive_concurrency=True, rate_limit=100, adaptive_concurrency_min=2)
    limits = ["envoy.filters.http.local_ratelimit", "envoy.filters.http.adaptive_concurrency"]
    assert filter_names(both) == [*limits, EXT_PROC_FILTER, router]
    filters = {f["name"]: f["typed_config"] for f in manager(render_bootstrap(both))["http_filters"]}
    controller = filters[limits[1]]["gradient_controller_config"]
    assert controller["min_rtt_calc_params"]["min_concurrency"] == 2
    assert filters[limits[1]]["concurrency_limit_exceeded_status"] == {"code": "TooManyRequests"}
    assert controller["min_rtt_calc_params"]["interval"] == "30s"  # measured, at min_concurrency
    target = replace(both, adaptive_concurrency_latency="0.1s")
    fixed = manager(render_bootstrap(target))["http_filters"][1]["typed_config"]["gradient_controller_config"]
    assert fixed["min_rtt_calc_params"] == {"min_concurrency": 2, "fixed_value": "0.1s"}
    # ext_proc itself, wrapped: skipped on a response naming a limit (a local reply passes every
    # encoder filter, and would otherwise open an ext_proc stream)
    wrapped = filters[EXT_PROC_FILTER]
    assert wrapped["extension_config"]["typed_config"]["@type"].endswith("ExternalProcessor")
    headers = [
        m["predicate"]["single_predicate"]["input"]["typed_config"]["header_name"]
        for m in wrapped["xds_matcher"]["matcher_list"]["matchers"]
    ]
    assert headers == [PROTOCOL_ERROR_HEADER, LIMIT_HEADER]
    assert limits_named(both) == ["concurrency", "rate"]


def limits_named(options: EnvoyOptions) -> list[str]:
    """The limits the local reply mappers name (LIMIT_HEADER), in the order Envoy tries them."""
    replies = manager(render_bootstrap(options))["local_reply_config"]["mappers"]
    return [
        h["header"]["value"]
        for m in replies
        for h in m.get("headers_to_add", [])
        if h["header"]["key"] == LIMIT_HEADER
    ]


def test_epp_run_adaptive_concurrency_is_opt_in() -> None:
    assert envoy_options(build_parser("run").parse_args(["run"])).adaptive_concurrency is False
    args = build_parser("run").parse_args(["run", "--adaptive-concurrency"])
    assert envoy_options(args).adaptive_concurrency is True
    assert envoy_options(args).adaptive_concurrency_latency is None
    target = envoy_options(build_parser("run").parse_args(["run", "--adaptive-concurrency-latency=0.1"]))
    assert (target.adaptive_concurrency, target.adaptive_concurrency_latency) == (True, "0.1s")
    with pytest.raises(ValueError, match="adaptive_concurrency_min must be at least 1"):
        EnvoyOptions(adaptive_concurrency=True, adaptive_concurrency_min=0)


def test_admission_control_counts_429s_only_and_comes_before_ext_proc() -> None:
    assert "admission_control" not in str(render_bootstrap(EnvoyOptions()))  # off by default
    options = EnvoyOptions(admission_control_aggression=3, admission_control_window="5s")
    assert filter_names(options) == [
        "envoy.filters.http.admission_control",
        EXT_PROC_FILTER,
        "envoy.filters.http.router",
    ]
    wrapped = manager(render_bootstrap(options))["http_filters"][0]["typed_config"]
    # skipped on a response that another limit refused (LIMIT_HEADER): those 429s are not the EPP's
    assert LIMIT_HEADER in str(wrapped["xds_matcher"])
    config = wrapped["extension_config"]["typed_config"]
    successes = config["success_criteria"]["http_criteria"]["http_success_status"]
    assert successes == [{"start": 100, "end": 429}, {"start": 430, "end": 600}]  # end exclusive
    assert (config["aggression"]["default_value"], config["sampling_window"]) == (3, "5s")
    replies = manager(render_bootstrap(options))["local_reply_config"]["mappers"]
    assert [m["status_code"] for m in replies if "admission" in str(m.get("headers_to_add"))] == [429]
    for bad in (0.5, -1, 101):
        with pytest.raises(ValueError, match="admission_control_aggression must be 0"):
            EnvoyOptions(admission_control_aggression=bad)


def test_the_quota_from_the_epp_limits_inference_paths_only_and_names_itself() -> None:
    assert "rate_limit_quota" not in str(render_bootstrap(EnvoyOptions()))  # off by default
    options = EnvoyOptions(quota_from_epp=True, rate_limit=100)
    quota = "envoy.filters.http.rate_limit_quota"
    names = ["envoy.filters.http.local_ratelimit", quota, EXT_PROC_FILTER, "envoy.filters.http.router"]
    assert filter_names(options) == names
    config = manager(render_bootstrap(options))["http_filters"][1]["typed_config"]
    assert config["rlqs_server"] == {"envoy_grpc": {"cluster_name": "epp"}}  # the EPP's own port
    (matcher,) = config["bucket_matchers"]["matcher_list"]["matchers"]
    path = matcher["predicate"]["single_predicate"]
    assert path["input"]["typed_config"]["header_name"] == ":path"
    limited = quota_regex(options)
    for inference in ("/v1/completions", "/v1/chat/completions?x=1", "/v1/responses/abc", "/v1/embeddings"):
        assert limited.match(inference), inference
    for other in ("/v1/models", "/health", "/v1/completionsx", "/metrics", "/x/v1/completions"):
        assert not limited.match(other), other  # never limited (not reported either)
    # paths allowed beyond the defaults reach the EPP: limited too; with "/", only the inference
    # paths (RE2 has no "all but /v1/models")
    extra = quota_regex(EnvoyOptions(quota_from_epp=True, allowed_paths=(*DEFAULT_ALLOWED_PATHS, "/v2/gen")))
    everything = quota_regex(EnvoyOptions(quota_from_epp=True, allowed_paths=("/",)))
    for also in ("/v1/completions", "/v2/gen", "/v2/gen/x?y=1"):
        assert extra.match(also), also
    assert everything.match("/v1/completions") and not everything.match("/v2/gen")
    for other in ("/v1/models", "/health", "/v2/genx"):
        assert not extra.match(other) and not everything.match(other), other
    settings = matcher["on_match"]["action"]["typed_config"]
    assert settings["bucket_id_builder"] == {"bucket_id_builder": {"name": {"string_value": "inference"}}}
    deny = settings["deny_response_settings"]
    assert deny["http_status"] == {"code": 429}
    assert base64.b64decode(deny["http_body"]["value"]).decode() == LIMIT_MESSAGES["quota"]
    # Envoy's reply as JSON naming the limit, before the rate limit's mapper (any other 429)
    assert limits_named(options) == ["quota", "rate"]
    replies = manager(render_bootstrap(options))["local_reply_config"]["mappers"]
    (quota_reply,) = [m for m in replies if "rate_limited_by_quota" in str(m["filter"])]
    assert quota_reply["body_format_override"]["json_format"]["error"]["message"] == LIMIT_MESSAGES["quota"]


def quota_regex(options: EnvoyOptions) -> re.Pattern[str]:
    """The paths the quota's one bucket covers."""
    (quota,) = [
        f for f in manager(render_bootstrap(options))["http_filters"] if "rate_limit_quota" in f["name"]
    ]
    (matcher,) = quota["typed_config"]["bucket_matchers"]["matcher_list"]["matchers"]
    return re.compile(matcher["predicate"]["single_predicate"]["value_match"]["safe_regex"]["regex"])


def test_the_quota_gives_each_listed_objective_a_bucket_and_the_rest_one_default_bucket() -> None:
    """An exact-match map on the objective header (a lookup however many names), each name's
    bucket id naming it; any other value, and no header, in the one default bucket, whose settings
    are those of the quota without objectives."""
    (quota,) = [
        f
        for f in manager(
            render_bootstrap(EnvoyOptions(quota_from_epp=True, quota_objectives=("chat", "batch")))
        )["http_filters"]
        if "rate_limit_quota" in f["name"]
    ]
    (matcher,) = quota["typed_config"]["bucket_matchers"]["matcher_list"]["matchers"]
    nested = matcher["on_match"]["matcher"]
    tree = nested["matcher_tree"]
    assert tree["input"]["typed_config"]["header_name"] == "x-gateway-inference-objective"
    by_name = tree["exact_match_map"]["map"]
    assert list(by_name) == ["chat", "batch"]
    for name, bucket in by_name.items():
        settings = bucket["action"]["typed_config"]
        assert settings["bucket_id_builder"] == {
            "bucket_id_builder": {"name": {"string_value": "inference"}, "objective": {"string_value": name}}
        }
        assert settings["deny_response_settings"]["response_headers_to_add"][1]["header"] == {
            "key": "x-gateway-limit",
            "value": "quota",
        }
    (plain,) = [
        f
        for f in manager(render_bootstrap(EnvoyOptions(quota_from_epp=True)))["http_filters"]
        if "quota" in f["name"]
    ]
    (one,) = plain["typed_config"]["bucket_matchers"]["matcher_list"]["matchers"]
    assert nested["on_no_match"] == one["on_match"]


def test_epp_run_gives_the_objectives_file_of_the_epp_to_the_gateways_quota(tmp_path: Path) -> None:
    objectives = tmp_path / "objectives.yaml"
    objectives.write_text(Path("bench/configs/objectives.yaml").read_text())
    for given in (
        [f"--epp-arg=--objectives-file={objectives}"],
        ["--epp-arg=--objectives-file", f"--epp-arg={objectives}"],
    ):
        args = build_parser("run").parse_args(["run", "--quota-from-epp", *given])
        assert envoy_options(args).quota_objectives == ("critical", "sheddable")
    without_quota = build_parser("run").parse_args(["run", f"--epp-arg=--objectives-file={objectives}"])
    assert envoy_options(without_quota).quota_objectives == ()
    assert envoy_options(build_parser("run").parse_args(["run", "--quota-from-epp"])).quota_objectives == ()
    missing = build_parser("run").parse_args(
        ["run", "--quota-from-epp", f"--epp-arg=--objectives-file={tmp_path}/no"]
    )
    with pytest.raises(ValueError, match="cannot read objectives file"):
        envoy_options(missing)


def test_epp_run_quota_from_epp_sets_both_sides() -> None:
    args = build_parser("run").parse_args(["run", "--quota-from-epp"])
    assert envoy_options(args).quota_from_epp is True
    assert "--rate-limit-quota" not in _epp_args(build_parser("run").parse_args(["run"]))
    assert _epp_args(args)[-2:] == ["--rate-limit-quota", "--queue-wait-target=50ms"]
    mine = build_parser("run").parse_args(["run", "--quota-from-epp", "--epp-arg=--queue-wait-target=20ms"])
    assert _epp_args(mine)[-2:] == ["--rate-limit-quota", "--queue-wait-target=20ms"]
    workers = build_parser("run").parse_args(["run", "--quota-from-epp", "--workers=2"])
    with pytest.raises(ValueError, match="--quota-from-epp with --workers"):
        _epp_args(workers)


def test_epp_run_sets_the_gateways_rate_limit_and_admission_control() -> None:
    defaults = envoy_options(build_parser("run").parse_args(["run"]))
    assert (defaults.rate_limit, defaults.admission_control_aggression) == (0, 0)
    args = build_parser("run").parse_args(["run", "--rate-limit=800", "--admission-control=3"])
    assert (envoy_options(args).rate_limit, envoy_options(args).admission_control_aggression) == (800, 3)
    for bad in (["--rate-limit=-1"], ["--rate-limit=fast"], ["--admission-control=0.5"]):
        with pytest.raises(SystemExit):
            build_parser("run").parse_args(["run", *bad])


@pytest.mark.parametrize("rate", [1, 5, 15, 25, 100, 800, 1234])
def test_the_rate_limit_admits_the_rate_asked_for(rate: int) -> None:
    """Tokens per fill over the fill interval is the rate exactly (a rate under 10, or not a
    multiple of 10, was rounded down to a multiple of 10 per second, and 1 to 5 admitted 10), the
    bucket holds one fill, and the interval is never under Envoy's 50 ms minimum."""
    limit = manager(render_bootstrap(EnvoyOptions(rate_limit=rate)))["http_filters"][0]["typed_config"]
    bucket = limit["token_bucket"]
    interval = float(bucket["fill_interval"].removesuffix("s"))
    assert bucket["tokens_per_fill"] / interval == pytest.approx(rate)
    assert bucket["max_tokens"] == bucket["tokens_per_fill"]
    assert interval >= 0.05
    if rate % 10 == 0:  # as before: a tenth of a second's worth at a time
        assert interval == pytest.approx(0.1)


def test_epp_run_refuses_an_empty_model_name(capsys: pytest.CaptureFixture[str]) -> None:
    """Its sims served '' and every request got the EPP's 400 "model not found in request body"."""
    with pytest.raises(SystemExit):
        build_parser("run").parse_args(["run", "--model="])
    assert "argument --model: the model name cannot be empty" in capsys.readouterr().err
    assert build_parser("run").parse_args(["run", "--model=my model"]).model == "my model"
