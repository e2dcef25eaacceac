"""The standalone Envoy bootstrap: listener -> ext_proc (the EPP) -> router -> ORIGINAL_DST pool.

Two body modes:
- `buffered` (default): request body BUFFERED (Envoy answers 413 beyond its buffer limit itself),
  response headers SEND and body STREAMED. The EPP answers a streamed (SSE) response's headers with
  a mode override that stops Envoy sending its chunks, so a long generation costs the EPP three
  messages, not one per token. Allows fail-open: with the EPP down, requests go round-robin to the
  fallback endpoints instead of failing.
- `full-duplex` (GIE's contract): FULL_DUPLEX_STREAMED both ways, every response chunk through the
  EPP (Envoy ignores mode overrides in this mode), fail-closed only: Envoy ignores
  `failure_mode_allow` with full-duplex streaming, so the EPP down -> 503 (status_on_error). No
  body size limit in Envoy (the EPP enforces its own).
Routing keys on the `envoy.lb` dynamic metadata the EPP sets (with the same value as its
`x-gateway-destination-endpoint` header): clients cannot forge metadata, so a client-sent
destination header never steers Envoy, not even when the EPP is down and Envoy fails open.

Only the paths of `allowed_paths` (by default the OpenAI APIs and /v1/models) reach the EPP and
the pool; any other path is Envoy's own JSON 404, so a model server's /metrics, /reset_prefix_cache
or LoRA-loading endpoints are not open to the gateway's clients. Paths are normalised first
(`..` segments resolved, repeated slashes merged), so `/v1/models/../metrics` is a 404 too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from epp.datastore.endpoint import split_host_port
from epp.headers import DESTINATION_HEADER, EPP_ERROR_KEY, LB_NAMESPACE
from epp.requests.parser import INFERENCE_API_PATHS

_DESTINATION_PATH = {"path": [{"key": DESTINATION_HEADER}]}
BODY_MODES = ("full-duplex", "buffered")
FAILURE_MODES = ("closed", "open")
DEFAULT_ALLOWED_PATHS = (*INFERENCE_API_PATHS, "/v1/models")
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"


def check_path_prefix(path: str) -> str:
    """An allowed path prefix, normalised as Envoy normalises request paths (no trailing or
    repeated slashes); `/` allows every path. ValueError names what is wrong."""
    if not path.startswith("/") or any(c in path for c in "?#%*") or any(c.isspace() for c in path):
        raise ValueError(
            f"an allowed path must start with '/' and hold no '?', '#', '%', '*' or spaces: {path!r}"
        )
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError(f"an allowed path must not hold '.' or '..' segments: {path!r}")
    return "/" + "/".join(segment for segment in path.split("/") if segment)


@dataclass(frozen=True)
class EnvoyOptions:
    listen_port: int = 8081
    admin_port: int = 9901
    listen_address: str = "127.0.0.1"
    epp_address: str = "127.0.0.1"
    epp_port: int = 9002
    # GIE's EPP serves TLS (self-signed) by default and gateways skip verification; so do we.
    epp_tls: bool = True
    body_mode: str = "buffered"
    failure_mode: str = "closed"
    # host:port list used only by fail-open when the EPP is unreachable, and by the baseline listener.
    fallback_endpoints: tuple[str, ...] = field(default_factory=tuple)
    # Set: also listen here (0 = a free port) WITHOUT ext_proc, round-robin over fallback_endpoints
    # (Envoy's own load balancing, the benchmarks' "no EPP" baseline).
    baseline_port: int | None = None
    message_timeout: str = "10s"
    # The longest the EPP may extend message_timeout for one message (override_message_timeout):
    # a request waiting in flow control's queue in buffered mode (the EPP's --queue-message-timeout).
    max_message_timeout: str = "300s"
    buffer_limit_bytes: int = 16 * 1024 * 1024
    # Path prefixes routed, each matching whole segments (`/v1/models` and `/v1/models/x`, not
    # `/v1/modelsx`); every other path gets Envoy's 404. `/` routes everything.
    allowed_paths: tuple[str, ...] = DEFAULT_ALLOWED_PATHS
    # Circuit breakers (max_requests, max_pending_requests, max_connections each) of the pool
    # clusters and of the epp cluster (one ext_proc stream per request, for its whole response):
    # Envoy's default of 1,024 turned the 1,025th concurrent generation into a 500; a limit
    # reached is a JSON 503 naming it (LIMIT_MESSAGES).
    pool_max_requests: int = 100_000
    epp_max_requests: int = 100_000
    # Downstream connections Envoy accepts (overload manager); beyond, new connections are closed.
    max_downstream_connections: int = 50_000
    # Slow clients: all headers within this, the whole request (headers and body, until the EPP
    # answers and it goes upstream) within request_timeout; neither limits a streamed response.
    request_headers_timeout: str = "10s"
    request_timeout: str = "300s"
    # Requests per second the gateway admits before calling the EPP (0: no limit). Set it to the
    # rate the EPP serves (docs/benchmarks.md): the excess is Envoy's 429 with Retry-After,
    # answered in C++ without a call to the EPP, so an overloaded EPP never sees it.
    rate_limit: int = 0

    def __post_init__(self) -> None:
        paths = tuple(dict.fromkeys(check_path_prefix(p) for p in self.allowed_paths))
        if not paths:
            raise ValueError("allowed_paths is empty: the gateway would route nothing")
        object.__setattr__(self, "allowed_paths", ("/",) if "/" in paths else paths)
        if self.body_mode not in BODY_MODES:
            raise ValueError(f"body_mode must be one of {BODY_MODES}, not {self.body_mode!r}")
        if self.failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}, not {self.failure_mode!r}")
        if self.failure_mode == "open" and self.body_mode == "full-duplex":
            raise ValueError(
                "Envoy ignores failure_mode_allow with full-duplex streaming (the EPP down still gives 503): "
                "use body mode 'buffered' for fail-open"
            )


def _typed(type_name: str, **config: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **config}


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _processing_mode(options: EnvoyOptions) -> dict[str, str]:
    if options.body_mode == "full-duplex":
        return {
            "request_header_mode": "SEND",
            "request_body_mode": "FULL_DUPLEX_STREAMED",
            "request_trailer_mode": "SEND",
            "response_header_mode": "SEND",
            "response_body_mode": "FULL_DUPLEX_STREAMED",
            "response_trailer_mode": "SEND",
        }
    return {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND",
        "response_body_mode": "STREAMED",
        "response_trailer_mode": "SKIP",
    }


def _http_filters(options: EnvoyOptions) -> list[dict[str, Any]]:
    ext_proc = {
        "name": EXT_PROC_FILTER,
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            grpc_service={"envoy_grpc": {"cluster_name": "epp"}, "timeout": "10s"},
            failure_mode_allow=options.failure_mode == "open",
            # The EPP unreachable or at the gateway's limit is unavailability, not a server error.
            status_on_error={"code": 503},
            message_timeout=options.message_timeout,
            max_message_timeout=options.max_message_timeout,
            # Lets the EPP stop Envoy sending a streamed response's chunks once it has its headers.
            allow_mode_override=True,
            processing_mode=_processing_mode(options),
            metadata_options={
                "receiving_namespaces": {"untyped": [LB_NAMESPACE]},
                "forwarding_namespaces": {"untyped": ["envoy.lb.subset_hint"]},
            },
        ),
    }
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
    }
    if options.rate_limit <= 0:
        return [ext_proc, router]
    per_fill = max(1, options.rate_limit // 10)  # refilled every 100 ms: bursts of a tenth of a second
    everyone = {
        "runtime_key": "epp.rate_limit",
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    }
    rate_limit = {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": _typed(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix="gateway_rate_limit",
            token_bucket={"max_tokens": per_fill, "tokens_per_fill": per_fill, "fill_interval": "0.1s"},
            filter_enabled=everyone,
            filter_enforced=everyone,
            response_headers_to_add=[
                {
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    "header": {"key": "retry-after", "value": "1"},
                }
            ],
        ),
    }
    return [rate_limit, ext_proc, router]


def _path_match(prefix: str) -> dict[str, str]:
    """Whole path segments, query string ignored."""
    return {"prefix": "/"} if prefix == "/" else {"path_separated_prefix": prefix}


def _routes(options: EnvoyOptions) -> list[dict[str, Any]]:
    """Per allowed path: route on the EPP's dynamic metadata, which clients cannot forge (the EPP's
    answer clears the route cache, so the request is re-matched once the metadata is there), else
    the fallback. Then the 404 for every other path."""
    routes: list[dict[str, Any]] = []
    for prefix in options.allowed_paths:
        picked = {
            "match": {
                **_path_match(prefix),
                "dynamic_metadata": [
                    {"filter": LB_NAMESPACE, **_DESTINATION_PATH, "value": {"present_match": True}}
                ],
            },
            "route": {"cluster": "pool", "timeout": "0s", "idle_timeout": "300s"},
        }
        fallback: dict[str, Any]
        if options.failure_mode == "open":
            fallback = {"match": _path_match(prefix), "route": {"cluster": "pool_fallback", "timeout": "0s"}}
        else:
            fallback = {
                "match": _path_match(prefix),
                "direct_response": {
                    "status": 503,
                    "body": {"inline_string": "no endpoint was picked"},
                },
            }
        routes += [picked, fallback]
    return routes + _not_routed(options, ext_proc=True)


def _not_routed(options: EnvoyOptions, ext_proc: bool) -> list[dict[str, Any]]:
    """Envoy's 404 for a path outside allowed_paths, without a call to the EPP."""
    if options.allowed_paths == ("/",):
        return []
    listed = ", ".join(options.allowed_paths)
    route: dict[str, Any] = {
        "match": {"prefix": "/"},
        "direct_response": {
            "status": 404,
            "body": {"inline_string": f"this gateway routes only {listed} and the paths under them"},
        },
    }
    if ext_proc:
        route["typed_per_filter_config"] = {
            EXT_PROC_FILTER: _typed(
                "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", disabled=True
            )
        }
    return [route]


def _clusters(options: EnvoyOptions) -> list[dict[str, Any]]:
    epp: dict[str, Any] = {
        "name": "epp",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        },
        "load_assignment": {
            "cluster_name": "epp",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket(options.epp_address, options.epp_port)}}]}
            ],
        },
    }
    if options.epp_tls:
        # GIE's EPP serves a self-signed certificate by default; gateways skip verification.
        epp["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                common_tls_context={"alpn_protocols": ["h2"]},
            ),
        }
    pool = {
        "name": "pool",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        "original_dst_lb_config": {"metadata_key": {"key": LB_NAMESPACE, **_DESTINATION_PATH}},
    }
    epp["circuit_breakers"] = _circuit_breakers(options.epp_max_requests)
    pool["circuit_breakers"] = _circuit_breakers(options.pool_max_requests)
    clusters = [epp, pool]
    if options.failure_mode == "open" or options.baseline_port is not None:
        endpoints = []
        for hostport in options.fallback_endpoints:
            host, port = split_host_port(hostport)
            if port is None:
                raise ValueError(f"fallback endpoint {hostport!r} needs a port")
            endpoints.append({"endpoint": {"address": _socket(host, port)}})
        clusters.append(
            {
                "name": "pool_fallback",
                "type": "STATIC",
                "lb_policy": "ROUND_ROBIN",
                "connect_timeout": "1s",
                "circuit_breakers": _circuit_breakers(options.pool_max_requests),
                "load_assignment": {
                    "cluster_name": "pool_fallback",
                    "endpoints": [{"lb_endpoints": endpoints}],
                },
            }
        )
    return clusters


def _circuit_breakers(limit: int) -> dict[str, Any]:
    return {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": limit,
                "max_pending_requests": limit,
                "max_requests": limit,
                "track_remaining": True,
            }
        ]
    }


def render_bootstrap(options: EnvoyOptions) -> dict[str, Any]:
    """The Envoy v3 bootstrap as a dict (write it as YAML or JSON)."""
    if options.failure_mode == "open" and not options.fallback_endpoints:
        raise ValueError("fail-open needs fallback_endpoints to route to when the EPP is down")
    if options.baseline_port is not None and not options.fallback_endpoints:
        raise ValueError("the baseline listener needs fallback_endpoints to round-robin over")
    listeners = [_listener("gateway", options.listen_port, _routes(options), _http_filters(options), options)]
    if options.baseline_port is not None:
        to_pool = [
            {"match": _path_match(prefix), "route": {"cluster": "pool_fallback", "timeout": "0s"}}
            for prefix in options.allowed_paths
        ] + _not_routed(options, ext_proc=False)
        router = _http_filters(options)[-1:]
        listeners.append(_listener("baseline", options.baseline_port, to_pool, router, options))
    return {
        "admin": {"address": _socket("127.0.0.1", options.admin_port)},
        "static_resources": {"listeners": listeners, "clusters": _clusters(options)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": _typed(
                        "envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        max_active_downstream_connections=options.max_downstream_connections,
                    ),
                }
            ]
        },
    }


def _local_replies(options: EnvoyOptions) -> dict[str, Any]:
    """Envoy's own error replies (upstream reset or refused, the EPP unreachable or too slow, a body
    over the buffer limit, no route) as JSON in the EPP's error shape instead of plain text or an
    empty body, with Envoy's response code details as the type. The EPP's own errors carry
    EPP_ERROR_KEY in the envoy.lb metadata and pass as they are (their body is already JSON)."""
    not_from_epp = {
        "metadata_filter": {
            "matcher": {
                "filter": LB_NAMESPACE,
                "path": [{"key": EPP_ERROR_KEY}],
                "value": {"present_match": False},
            },
            "match_if_key_not_found": True,
        }
    }

    def mapper(
        message: str,
        status: int | None = None,
        kind: str = "%RESPONSE_CODE_DETAILS%",
        also: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        error = {"message": message, "type": kind, "code": "%RESPONSE_CODE%"}
        body = {"json_format": {"error": error}, "content_type": "application/json"}
        if status is None:
            return {"filter": not_from_epp, "body_format_override": body}
        comparison = {"op": "EQ", "value": {"default_value": status, "runtime_key": f"epp.reply_{status}"}}
        both: list[dict[str, Any]] = [not_from_epp, {"status_code_filter": {"comparison": comparison}}]
        if also is not None:
            both.append(also)
        return {"filter": {"and_filter": {"filters": both}}, "body_format_override": body}

    def overflow(message: str, flag: str = "UO", status: int = 503) -> dict[str, Any]:
        kind = "Overflow" if flag == "UO" else "RateLimited"
        error = {"message": message, "type": f"{kind} - %RESPONSE_CODE_DETAILS%", "code": status}
        matcher: dict[str, Any] = {"response_flag_filter": {"flags": [flag]}}
        if flag == "RL":
            # Envoy's local rate limit sets no response flag; the EPP's own 429s carry its key.
            comparison = {"op": "EQ", "value": {"default_value": 429, "runtime_key": "epp.reply_429"}}
            matcher = {
                "and_filter": {"filters": [not_from_epp, {"status_code_filter": {"comparison": comparison}}]}
            }
        return {
            "filter": matcher,
            "status_code": status,
            "headers_to_add": [
                {
                    "header": {"key": "retry-after", "value": "1"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "body_format_override": {"json_format": {"error": error}, "content_type": "application/json"},
        }

    # ext_proc's failures (status_on_error 503) have an empty body and no response flag.
    return {
        "mappers": [
            overflow(LIMIT_MESSAGES["rate"].format(rate=options.rate_limit), "RL", 429),
            overflow(LIMIT_MESSAGES["pool"]),
            # The router's 503s (a reset, a refused connection) carry a response flag ...
            mapper("%LOCAL_REPLY_BODY%", 503, also={"response_flag_filter": {}}),
            # ... ext_proc's failures none.
            mapper(LIMIT_MESSAGES["epp"], 503),
            mapper("no answer in time from the endpoint picker or the model server", 504),
            # Only a path outside the policy is a local 404 here: the EPP's own carry its key.
            mapper("inference error: NotFound - %LOCAL_REPLY_BODY%", 404, kind="NotFound"),
            mapper("%LOCAL_REPLY_BODY%"),
        ]
    }


LIMIT_MESSAGES = {
    "rate": "the gateway's limit of {rate} requests per second was reached (local rate limit before the "
    "endpoint picker); retry later",
    "pool": "the gateway's limit of concurrent requests to the model servers was reached "
    "(circuit breaker of cluster pool: max_requests / max_pending_requests / max_connections); retry later",
    "epp": "the endpoint picker is unreachable or failed, or the gateway's limit of concurrent calls to it "
    "was reached (circuit breaker of cluster epp)",
}


def _listener(
    name: str, port: int, routes: list[dict[str, Any]], filters: list[dict[str, Any]], options: EnvoyOptions
) -> dict[str, Any]:
    manager = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=name,
        codec_type="AUTO",
        # The path policy matches the path as the model server will see it.
        normalize_path=True,
        merge_slashes=True,
        route_config={"virtual_hosts": [{"name": "pool", "domains": ["*"], "routes": routes}]},
        http_filters=filters,
        local_reply_config=_local_replies(options),
        request_headers_timeout=options.request_headers_timeout,
        request_timeout=options.request_timeout,
    )
    return {
        "name": name,
        "address": _socket(options.listen_address, port),
        "per_connection_buffer_limit_bytes": options.buffer_limit_bytes,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
