"""The standalone Envoy bootstrap: listener -> ext_proc (the EPP) -> router -> the pool.

Two body modes:
- `buffered` (default): request body BUFFERED (Envoy answers 413 beyond its buffer limit itself),
  response headers SEND and body STREAMED. The EPP answers a streamed (SSE) response's headers with
  a mode override that stops Envoy sending its chunks, so a long generation costs the EPP three
  messages, not one per token. ext_proc fails open, so a response already routed outlives an EPP
  crash; a request the EPP has not routed has no destination metadata and gets a 503
  (`--failure-mode closed`: the EPP unavailable is unavailability, as status_on_error says) or
  goes round-robin to the fallback endpoints (`open`).
- `full-duplex` (GIE's contract): FULL_DUPLEX_STREAMED both ways, every response chunk through the
  EPP (Envoy ignores mode overrides in this mode), fail-closed only: Envoy ignores
  `failure_mode_allow` with full-duplex streaming, so the EPP down -> 503 (status_on_error), and
  streams in flight when the EPP dies can be cut. No body size limit in Envoy (the EPP enforces its
  own).
Routing keys on the `envoy.lb` dynamic metadata the EPP sets (with the same value as its
`x-gateway-destination-endpoint` header): clients cannot forge metadata, so a client-sent
destination header never steers Envoy, not even when the EPP is down and Envoy fails open.

With `pool_eds_path` (the default), the pool cluster's hosts come from an EDS file the EPP keeps
(`epp serve --envoy-eds-file`) and the override-host load-balancing policy takes the EPP's
`primary,fallback,...` list in order: a retry
(connect failure, reset, 503, no first byte in time on a streaming request) goes to the next
endpoint listed, then round robin over the hosts not tried yet that the EPP would route the
request to (healthy in its view and serving the same models: epp.discovery.eds). Envoy reports
the endpoint that served in the `x-gateway-destination-endpoint-served` response header, which the
EPP reads for its load accounting. Without it (`pool_eds_path=None`), an ORIGINAL_DST cluster
reaches any address but only the first listed.

Only the paths of `allowed_paths` (by default the OpenAI APIs and /v1/models) reach the EPP and
the pool; any other path is Envoy's own JSON 404, so a model server's /metrics, /reset_prefix_cache
or LoRA-loading endpoints are not open to the gateway's clients. Paths are normalised first
(`..` segments resolved, repeated slashes merged), so `/v1/models/../metrics` is a 404 too."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from epp.datastore.endpoint import split_host_port
from epp.headers import (
    DESTINATION_HEADER,
    EPP_ERROR_KEY,
    FALLBACK_GROUP_KEY,
    LB_NAMESPACE,
    OBJECTIVE_HEADER,
    QUOTA_BUCKET,
    QUOTA_OBJECTIVE_KEY,
    SERVED_KEY,
    STREAMING_KEY,
)
from epp.requests.parser import INFERENCE_API_PATHS

_DESTINATION_PATH = {"path": [{"key": DESTINATION_HEADER}]}
BODY_MODES = ("full-duplex", "buffered")
EPP_UNREACHABLE = "the endpoint picker is unreachable or failed"
FAILURE_MODES = ("closed", "open")
DEFAULT_ALLOWED_PATHS = (*INFERENCE_API_PATHS, "/v1/models")
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
REFERENCE_CLUSTER = "epp_reference"
VERSUS_CLUSTER = "epp_versus"


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
    # Active-active EPP replicas: more EPP ports on epp_address (each a host of the EPP cluster),
    # and how many hosts to list per port, i.e. how many HTTP/2 connections Envoy opens to it (a
    # port served by `epp serve --workers N` spreads connections, not streams, over its workers).
    epp_extra_ports: tuple[int, ...] = ()
    epp_connections: int = 1
    # GIE's EPP serves TLS (self-signed) by default and gateways skip verification; so do we
    # unless `epp_ca_path` is set.
    epp_tls: bool = True
    # Set: verify the EPP's certificate against this CA (PEM file) and its DNS SAN `epp_san`.
    epp_ca_path: str | None = None
    epp_san: str = "epp"
    # Set (both): present this client certificate to the EPP (for `epp serve --client-ca-path`).
    client_cert_path: str | None = None
    client_key_path: str | None = None
    body_mode: str = "buffered"
    failure_mode: str = "closed"
    # host:port list used only by fail-open when the EPP is unreachable, and by the baseline listener.
    fallback_endpoints: tuple[str, ...] = field(default_factory=tuple)
    # Set: also listen here (0 = a free port) WITHOUT ext_proc, round-robin over fallback_endpoints
    # (Envoy's own load balancing, the benchmarks' "no EPP" baseline).
    baseline_port: int | None = None
    # Set: a second ext_proc server on epp_address at this port, consulted by listener `reference`
    # (reference_port, 0 = a free port) with the gateway's filters, routes, TLS and processing
    # mode (the benchmarks' minimal ext_proc server beside the EPP).
    reference_epp_port: int | None = None
    reference_port: int = 0
    # Set: likewise a second EPP (another config) at this port, consulted by listener `versus`
    # (versus_port): two EPP configurations side by side behind one Envoy (the benchmarks).
    versus_epp_port: int | None = None
    versus_port: int = 0
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
    # Envoy's adaptive concurrency filter (gradient controller) before ext_proc: it samples each
    # request's latency through the EPP and the model server, periodically measures the latency at
    # a concurrency of `adaptive_concurrency_min` (minRTT), and caps requests in flight where the
    # latency stays near it; the excess is Envoy's JSON 429 with Retry-After, answered without a
    # call to the EPP. Off by default (docs/operations.md, "Limits and overload").
    adaptive_concurrency: bool = False
    adaptive_concurrency_min: int = 3
    # Set ("0.1s"): take this as the minRTT instead of measuring it, a latency target (the limit
    # shrinks while the p90 exceeds it by more than 25 %); no periodic windows at the minimum.
    adaptive_concurrency_latency: str | None = None
    # Envoy's admission control filter before ext_proc, fed by the EPP's own refusals: it counts the
    # 429s among the responses of the last `admission_control_window` and refuses that share of new
    # requests at once (sharpened by `admission_control_aggression`: the share to the power
    # 1/aggression), so the excess the EPP would refuse late, after queueing, is refused at the
    # door instead, a JSON 429 with Retry-After answered without a call to the EPP. Any 429 counts,
    # the model servers' and flow control's too. 0: off, the default (docs/operations.md).
    admission_control_aggression: float = 0.0
    admission_control_window: str = "2s"
    # Envoy's rate_limit_quota filter before ext_proc, its token bucket assigned by the EPP over
    # the rate-limit quota service (`epp serve --rate-limit-quota`, on the EPP cluster): no limit
    # while the EPP keeps up, its capacity measured while its own controller sheds. The
    # excess is a JSON 429 with Retry-After, answered without a call to the EPP. Off by default.
    quota_from_epp: bool = False
    # The InferenceObjective names each given a bucket of their own in that filter (the request's
    # x-gateway-inference-objective header, matched exactly), so the EPP assigns critical objectives
    # their demand first and sheddable ones what is left (epp.flowcontrol.quota_priority); a request
    # naming none of them, or no objective, is in the one default bucket (GIE's priority 0). Only
    # names listed here make buckets: a client's arbitrary header values cannot grow Envoy's
    # buckets (`epp run` lists the names of the EPP's --objectives-file).
    quota_objectives: tuple[str, ...] = ()
    # Set: the pool cluster's hosts come from this EDS file (a DiscoveryResponse holding one
    # ClusterLoadAssignment, epp.discovery.eds: `epp serve --envoy-eds-file` keeps it; Envoy re-reads
    # it when it is replaced, and refuses to start without it; relative to Envoy's working
    # directory) and the override-host policy routes on the EPP's list `primary,fallback,...`,
    # retrying on the next. None: an ORIGINAL_DST cluster that needs no file and reaches any
    # address, but only the first of the list (an EPP that cannot write the file: GIE's).
    pool_eds_path: str | None = "pool/endpoints.yaml"
    # Retries of a request whose attempt failed before a response byte reached the client: connect
    # failure, reset, a 503 from the pod, a streaming attempt without response headers in time.
    retries: int = 2
    # Streaming requests: time to the response headers of one attempt (a hung pod), then the
    # longest gap between bytes; no total bound, a generation streams as long as it produces.
    first_byte_timeout: str = "30s"
    stream_idle_timeout: str = "60s"
    # A non-streaming response's first byte is its end: one bound on the whole response.
    response_timeout: str = "300s"
    connect_timeout: str = "1s"

    def __post_init__(self) -> None:
        paths = tuple(dict.fromkeys(check_path_prefix(p) for p in self.allowed_paths))
        if not paths:
            raise ValueError("allowed_paths is empty: the gateway would route nothing")
        object.__setattr__(self, "allowed_paths", ("/",) if "/" in paths else paths)
        if self.body_mode not in BODY_MODES:
            raise ValueError(f"body_mode must be one of {BODY_MODES}, not {self.body_mode!r}")
        if self.failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}, not {self.failure_mode!r}")
        if self.adaptive_concurrency_min < 1:
            raise ValueError(
                f"adaptive_concurrency_min must be at least 1, not {self.adaptive_concurrency_min}"
            )
        if not (self.admission_control_aggression == 0 or 1 <= self.admission_control_aggression <= 100):
            raise ValueError(
                "admission_control_aggression must be 0 (off) or 1 to 100, "
                f"not {self.admission_control_aggression}"
            )
        if (self.client_cert_path is None) != (self.client_key_path is None):
            raise ValueError("client_cert_path and client_key_path go together")
        if not self.epp_tls and (self.epp_ca_path or self.client_cert_path):
            raise ValueError("verifying the EPP or presenting a client certificate needs epp_tls")
        if self.failure_mode == "open" and self.body_mode == "full-duplex":
            raise ValueError(
                "Envoy ignores failure_mode_allow with full-duplex streaming (the EPP down still gives 503): "
                "use body mode 'buffered' for fail-open"
            )


def _typed(type_name: str, **config: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **config}


def _epp_failover() -> dict[str, Any]:
    """Several EPP hosts: a dead one (connection refused) is ejected after two local failures and
    found unhealthy by a gRPC health check within 500 ms, so new ext_proc streams go to the others;
    it returns when it answers again."""
    return {
        "health_checks": [
            {
                "timeout": "0.25s",
                "interval": "0.5s",
                # ext_proc's streams do not count as traffic, so without these the checks would
                # run at the 60 s no-traffic default
                "no_traffic_interval": "0.5s",
                "no_traffic_healthy_interval": "0.5s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 2,
            "interval": "0.5s",
            "base_ejection_time": "2s",
            "max_ejection_percent": 100,
        },
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


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


def _http_filters(options: EnvoyOptions, cluster: str = "epp") -> list[dict[str, Any]]:
    ext_proc = {
        "name": EXT_PROC_FILTER,
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            grpc_service={"envoy_grpc": {"cluster_name": cluster}, "timeout": "10s"},
            # Fail open even when failing closed: a routed response must outlive the EPP (with it
            # closed, an EPP crash resets every generation in flight). A request the EPP did not
            # route carries no destination metadata and gets the fail-closed route's 503. Envoy
            # ignores this with full-duplex streaming (an EPP crash resets streams in flight).
            failure_mode_allow=options.body_mode == "buffered",
            # Where ext_proc fails closed (full-duplex): the EPP unreachable or at the gateway's
            # limit is unavailability, not a server error.
            status_on_error={"code": 503},
            message_timeout=options.message_timeout,
            max_message_timeout=options.max_message_timeout,
            # Lets the EPP stop Envoy sending a streamed response's chunks once it has its headers.
            allow_mode_override=True,
            processing_mode=_processing_mode(options),
            # When Envoy received the request, sent with its headers: the EPP refuses a request
            # that already waited too long for it (--max-queue-wait).
            request_attributes=["request.time"],
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
    admission = _admission_filters(options)
    # Off unless the virtual host enables it (_listener): a request Envoy refuses before any route
    # matches (a malformed request line, headers over the limit) gets its 400 or 431. With ext_proc
    # on, that local reply waited for the EPP's answer about its headers and the connection, closed
    # at once after an HTTP/1 protocol error, went with it: the client got an empty reply. A body
    # that breaks the framing after routing (a chunk size `zz`) is such a reply on a stream ext_proc
    # already runs: ext_proc skips it by its PROTOCOL_ERROR_HEADER (the EPP routed nothing yet).
    skipped_on = (PROTOCOL_ERROR_HEADER, LIMIT_HEADER) if admission else (PROTOCOL_ERROR_HEADER,)
    return [*admission, {**_skipped_when(ext_proc, *skipped_on), "disabled": True}, router]


def _skipped_when(extension: dict[str, Any], *headers: str) -> dict[str, Any]:
    """A filter that leaves alone a response carrying any of `headers`. Envoy passes a local reply
    through every encoder filter, so without this a refusal before ext_proc (LIMIT_HEADER) would
    still open an ext_proc stream for its response headers and wait in the EPP's queue for the
    answer, the admission control filter would count the rate limit's 429s as the EPP's, and an
    HTTP/1 protocol error's 400 (PROTOCOL_ERROR_HEADER) would wait for the EPP on a connection Envoy
    closes at once."""
    skip = {
        "action": {
            "name": "skip",
            "typed_config": _typed("envoy.extensions.filters.common.matcher.action.v3.SkipFilter"),
        }
    }
    matchers = [
        {
            "predicate": {
                "single_predicate": {
                    "input": {
                        "name": "refused",
                        "typed_config": _typed(
                            "envoy.type.matcher.v3.HttpResponseHeaderMatchInput", header_name=header
                        ),
                    },
                    "value_match": {"safe_regex": {"google_re2": {}, "regex": ".+"}},
                }
            },
            "on_match": skip,
        }
        for header in headers
    ]
    wrapped = _typed(
        "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        extension_config=extension,
        xds_matcher={"matcher_list": {"matchers": matchers}},
    )
    return {"name": extension["name"], "typed_config": wrapped}


def _admission_filters(options: EnvoyOptions) -> list[dict[str, Any]]:
    """The gateway's own limits, before ext_proc: what they refuse never reaches the EPP, and the
    adaptive concurrency filter's latency samples include the EPP's time."""
    filters = [_rate_limit(options)] if options.rate_limit > 0 else []
    if options.quota_from_epp:
        filters.append(_quota_from_epp(options))
    if options.adaptive_concurrency:
        filters.append(_adaptive_concurrency(options))
    if options.admission_control_aggression > 0:
        # after the other limits, which refuse first: their 429s are not the EPP's overload
        filters.append(_skipped_when(admission_control_filter(options), LIMIT_HEADER))
    return filters


def admission_control_filter(options: EnvoyOptions) -> dict[str, Any]:
    """Envoy's admission control filter, also in the gateway manifests' admission-control patches.
    The share of 429s among recent responses (the EPP's refusals, counted at the response
    headers, so a long generation counts when it starts) becomes the share refused before ext_proc.
    Its own refusals are not counted, so it settles where the EPP still refuses a part of what
    reaches it (a proportional control: about a fifth of all refusals at twice the EPP's rate
    with aggression 2, docs/benchmarks.md)."""
    every_status_but_429 = [{"start": 100, "end": 429}, {"start": 430, "end": 600}]
    return {
        "name": "envoy.filters.http.admission_control",
        "typed_config": _typed(
            "envoy.extensions.filters.http.admission_control.v3.AdmissionControl",
            success_criteria={"http_criteria": {"http_success_status": every_status_but_429}},
            sampling_window=options.admission_control_window,
            aggression={
                "default_value": options.admission_control_aggression,
                "runtime_key": "epp.admission",
            },
            # every 429 in the window counts (below 100 %, a share of them would be ignored), and
            # at any request rate
            sr_threshold={"default_value": {"value": 100.0}, "runtime_key": "epp.admission_threshold"},
            rps_threshold={"default_value": 0, "runtime_key": "epp.admission_rps"},
            max_rejection_probability={"default_value": {"value": 99.0}, "runtime_key": "epp.admission_max"},
        ),
    }


def _quota_from_epp(options: EnvoyOptions) -> dict[str, Any]:
    """Envoy's rate_limit_quota filter over the EPP cluster, for every inference request (the paths
    the EPP parses, and those allowed beyond the defaults, which reach the EPP too; /v1/models and
    other paths are never limited, nor is any other with `/` allowed: RE2 cannot say "all but
    /v1/models"): one bucket per objective of `quota_objectives` (an exact-match map on the
    objective header: a lookup, however many names), and one default bucket for the others and for
    requests naming none. Reported to the EPP every QUOTA_REPORTING_INTERVAL, allowed while the EPP
    assigns nothing (the filter's default), and when the EPP's token bucket is empty, refused with
    a JSON 429 naming the limit (_local_replies: the filter's details, QUOTA_LIMITED)."""
    extra = [path for path in options.allowed_paths if path not in (*DEFAULT_ALLOWED_PATHS, "/")]
    paths = "|".join(re.escape(path) for path in (*INFERENCE_API_PATHS, *extra))
    default = _quota_bucket({})
    on_match: dict[str, Any] = default
    if options.quota_objectives:
        by_objective = {name: _quota_bucket({QUOTA_OBJECTIVE_KEY: name}) for name in options.quota_objectives}
        objective = {
            "name": "objective",
            "typed_config": _typed(
                "envoy.type.matcher.v3.HttpRequestHeaderMatchInput", header_name=OBJECTIVE_HEADER
            ),
        }
        on_match = {
            "matcher": {
                "matcher_tree": {"input": objective, "exact_match_map": {"map": by_objective}},
                "on_no_match": default,
            }
        }
    inference = {
        "predicate": {
            "single_predicate": {
                "input": {
                    "name": "path",
                    "typed_config": _typed(
                        "envoy.type.matcher.v3.HttpRequestHeaderMatchInput", header_name=":path"
                    ),
                },
                "value_match": {"safe_regex": {"google_re2": {}, "regex": f"^(?:{paths})(?:[/?].*)?$"}},
            }
        },
        "on_match": on_match,
    }
    return {
        "name": "envoy.filters.http.rate_limit_quota",
        "typed_config": _typed(
            "envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaFilterConfig",
            rlqs_server={"envoy_grpc": {"cluster_name": "epp"}},
            domain="epp",
            bucket_matchers={"matcher_list": {"matchers": [inference]}},
        ),
    }


def _quota_bucket(keys: dict[str, str]) -> dict[str, Any]:
    """The matcher action of one quota bucket: its settings, its id `name: inference` and `keys`."""
    builder = {"name": {"string_value": QUOTA_BUCKET}} | {
        key: {"string_value": value} for key, value in keys.items()
    }
    settings = _typed(
        "envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaBucketSettings",
        bucket_id_builder={"bucket_id_builder": builder},
        reporting_interval=QUOTA_REPORTING_INTERVAL,
        deny_response_settings={
            "http_status": {"code": 429},
            # (a BytesValue: base64 in the bootstrap's JSON; the local reply mapper makes it JSON)
            "http_body": {"value": base64.b64encode(LIMIT_MESSAGES["quota"].encode()).decode()},
            "response_headers_to_add": [
                {"header": {"key": "retry-after", "value": "1"}},
                {"header": {"key": LIMIT_HEADER, "value": "quota"}},
            ],
        },
    )
    return {"action": {"name": QUOTA_BUCKET, "typed_config": settings}}


def _adaptive_concurrency(options: EnvoyOptions) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.adaptive_concurrency",
        "typed_config": _typed(
            "envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
            gradient_controller_config={
                # the tail, not the median: the EPP's queue shows there first
                "sample_aggregate_percentile": {"value": 90},
                "concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
                "min_rtt_calc_params": _min_rtt(options),
            },
            # a refusal to retry later, counted as shed (as the EPP's own): not a server error
            concurrency_limit_exceeded_status={"code": "TooManyRequests"},
        ),
    }


def _min_rtt(options: EnvoyOptions) -> dict[str, Any]:
    params: dict[str, Any] = {"min_concurrency": options.adaptive_concurrency_min}
    if options.adaptive_concurrency_latency is not None:
        return {**params, "fixed_value": options.adaptive_concurrency_latency}
    return {**params, "interval": "30s", "request_count": 50}


def _rate_limit(options: EnvoyOptions) -> dict[str, Any]:
    # Refilled every 100 ms when the rate allows it (bursts of a tenth of a second), else as often as
    # whole tokens allow: the rate is exact (15/s is 3 every 200 ms, 1/s 1 every second).
    fills = math.gcd(options.rate_limit, 10)  # per second
    per_fill = options.rate_limit // fills
    everyone = {
        "runtime_key": "epp.rate_limit",
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    }
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": _typed(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix="gateway_rate_limit",
            token_bucket={
                "max_tokens": per_fill,
                "tokens_per_fill": per_fill,
                "fill_interval": f"{1 / fills:g}s",
            },
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


def _path_match(prefix: str) -> dict[str, str]:
    """Whole path segments, query string ignored."""
    return {"prefix": "/"} if prefix == "/" else {"path_separated_prefix": prefix}


def _picked(*keys: str) -> list[dict[str, Any]]:
    return [
        {"filter": LB_NAMESPACE, "path": [{"key": key}], "value": {"present_match": True}} for key in keys
    ]


def _retry_policy(options: EnvoyOptions, per_try_timeout: str | None) -> dict[str, Any]:
    """Retry an attempt that failed before any response byte reached the client (Envoy never
    retries once the response has started) on the next host of the EPP's list: the override-host
    policy hands out `primary,fallback,...` in order, and the previous-hosts predicate keeps a retry
    off a host already tried (so with the list used up, the fallback's round robin over the healthy
    hosts of the request's group picks a new one, or, after 5 picks, the last one it found)."""
    policy: dict[str, Any] = {
        "retry_on": "connect-failure,refused-stream,reset,retriable-status-codes",
        "retriable_status_codes": [503],
        "num_retries": options.retries,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"},
    }
    if per_try_timeout is not None:
        policy["per_try_timeout"] = per_try_timeout
    return policy


def _routes(options: EnvoyOptions) -> list[dict[str, Any]]:
    """Per allowed path: route on the EPP's dynamic metadata, which clients cannot forge (the EPP's
    answer clears the route cache, so the request is re-matched once the metadata is there), else
    the fallback. Then the 404 for every other path.

    Streaming requests (the EPP marks them) get a time-to-first-byte bound per attempt, after which
    the next endpoint is tried, and an idle bound between bytes, but no total: a generation streams
    for as long as it produces tokens. A non-streaming response's first byte is its end, so it gets
    one bound on the whole response and is not retried on timeout (the generation would restart)."""
    routes: list[dict[str, Any]] = []
    for prefix in options.allowed_paths:
        streaming: dict[str, Any] = {
            "match": {**_path_match(prefix), "dynamic_metadata": _picked(DESTINATION_HEADER, STREAMING_KEY)},
            "route": {
                "cluster": "pool",
                "timeout": "0s",
                "idle_timeout": options.stream_idle_timeout,
                "retry_policy": _retry_policy(options, options.first_byte_timeout),
            },
        }
        whole: dict[str, Any] = {
            "match": {**_path_match(prefix), "dynamic_metadata": _picked(DESTINATION_HEADER)},
            "route": {
                "cluster": "pool",
                "timeout": options.response_timeout,
                "idle_timeout": options.response_timeout,
                "retry_policy": _retry_policy(options, None),
            },
        }
        fallback: dict[str, Any]
        if options.failure_mode == "open":
            fallback = {"match": _path_match(prefix), "route": {"cluster": "pool_fallback", "timeout": "0s"}}
        else:
            # The EPP unreachable (ext_proc fails open so that a routed response outlives the
            # EPP): no metadata, so this answer, a 503 as status_on_error gives where ext_proc
            # fails closed (the EPP unavailable is unavailability, not a server error).
            fallback = {
                "match": _path_match(prefix),
                "direct_response": {"status": 503, "body": {"inline_string": EPP_UNREACHABLE}},
            }
        routes += [streaming, whole, fallback]
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
    epp_ports = (options.epp_port, *options.epp_extra_ports)
    clusters = [_epp_cluster(options, "epp", epp_ports), _pool_cluster(options)]
    for _, cluster, epp_port, _ in _side_ext_procs(options):
        clusters.append(_epp_cluster(options, cluster, (epp_port,)))
    if options.failure_mode == "open" or options.baseline_port is not None:
        clusters.append(_fallback_cluster(options))
    return clusters


# Envoy's HTTP/2 limits on its connections to the EPP, which carry one stream per request for its
# whole exchange. With Envoy's defaults a flood the EPP could not keep up with failed requests with
# 503 (measured: 3,000 to 9,000 of 15,000 in 3 s at 5,000 req/s, load average 2 to 4 on 2 cores):
# - 1,024 streams per connection: past them Envoy connects again, and the requests queued for the
#   new connection failed when it did not connect within the cluster's 1 s timeout on the busy host
#   (`cluster.epp.upstream_cx_connect_timeout`, `upstream_rq_pending_failure_eject`). Lifted to
#   HTTP/2's maximum, so the cluster's circuit breaker (`epp_max_requests`) is the one limit.
# - 1,000 control frames (10,000 in all) queued unwritten while the EPP's socket is full: Envoy
#   resets each ext_proc stream once it has its last reply, so a backlog the EPP had not read yet
#   was taken for a flood and the connection closed with every stream on it ("protocol error",
#   `cluster.epp.http2.outbound_control_flood`, `upstream_cx_protocol_error`). The EPP is the
#   gateway's own service: the guard stays only against a runaway, 20 s of resets at 5,000 req/s,
#   and ten times that for all frames (headers, body data, resets).
EPP_HTTP2_OPTIONS = {
    "max_concurrent_streams": 2**31 - 1,
    "max_outbound_control_frames": 100_000,
    "max_outbound_frames": 1_000_000,
}


def _epp_cluster(options: EnvoyOptions, name: str, ports: tuple[int, ...]) -> dict[str, Any]:
    epp: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": dict(EPP_HTTP2_OPTIONS)},
            )
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket(options.epp_address, port)}}
                        for port in ports
                        for _ in range(max(options.epp_connections, 1))
                    ]
                }
            ],
        },
    }
    if len(ports) > 1 or options.epp_connections > 1:
        epp.update(_epp_failover())
    if options.epp_tls:
        epp["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": _epp_tls(options)}
    epp["circuit_breakers"] = _circuit_breakers(options.epp_max_requests)
    return epp


def _fallback_cluster(options: EnvoyOptions) -> dict[str, Any]:
    endpoints = []
    for hostport in options.fallback_endpoints:
        host, port = split_host_port(hostport)
        if port is None:
            raise ValueError(f"fallback endpoint {hostport!r} needs a port")
        endpoints.append({"endpoint": {"address": _socket(host, port)}})
    return {
        "name": "pool_fallback",
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": options.connect_timeout,
        "circuit_breakers": _circuit_breakers(options.pool_max_requests),
        "load_assignment": {"cluster_name": "pool_fallback", "endpoints": [{"lb_endpoints": endpoints}]},
    }


def _circuit_breakers(limit: int, max_retries: int | None = None) -> dict[str, Any]:
    threshold: dict[str, Any] = {
        "priority": "DEFAULT",
        "max_connections": limit,
        "max_pending_requests": limit,
        "max_requests": limit,
    }
    if max_retries is not None:
        threshold["max_retries"] = max_retries
    threshold["track_remaining"] = True
    return {"thresholds": [threshold]}


def _epp_tls(options: EnvoyOptions) -> dict[str, Any]:
    """GIE's EPP serves a self-signed certificate by default and gateways skip verification. With
    a CA, Envoy verifies the EPP's certificate and its SAN; with a client certificate, the EPP can
    verify Envoy (mutual TLS)."""
    common: dict[str, Any] = {"alpn_protocols": ["h2"]}
    extra: dict[str, Any] = {}
    if options.client_cert_path is not None:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": options.client_cert_path},
                "private_key": {"filename": options.client_key_path},
            }
        ]
    if options.epp_ca_path is not None:
        common["validation_context"] = {
            "trusted_ca": {"filename": options.epp_ca_path},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": options.epp_san}}],
        }
        extra["sni"] = options.epp_san
    return _typed(
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", common_tls_context=common, **extra
    )


def _pool_cluster(options: EnvoyOptions) -> dict[str, Any]:
    cluster = _pool_hosts(options)
    # Envoy's default circuit breaker allows 3 retries in flight per cluster: a pod dying under a few
    # dozen streams then turns all but 3 of their retries into 503/504 (`upstream_rq_retry_overflow`).
    # Each request's retries are bounded by `retries` already.
    # Same thresholds entry as the concurrency limits (LIMIT_MESSAGES["pool"]).
    cluster["circuit_breakers"] = _circuit_breakers(options.pool_max_requests, max_retries=4096)
    return cluster


def _pool_hosts(options: EnvoyOptions) -> dict[str, Any]:
    if options.pool_eds_path is None:
        # Reaches any address, but takes only the first of a `primary,fallback` list as it is: no
        # fallback, a retry goes back to the same address.
        return {
            "name": "pool",
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": options.connect_timeout,
            "original_dst_lb_config": {"metadata_key": {"key": LB_NAMESPACE, **_DESTINATION_PATH}},
        }
    # The override-host policy picks among the cluster's own hosts (ORIGINAL_DST cannot use it:
    # Envoy 1.40 allows only CLUSTER_PROVIDED there), so the hosts are the pool, from an EDS file.
    # It takes the EPP's list in order, one host per attempt (health unchecked: the EPP chose
    # them); a listed host not in the cluster is skipped. With the list used up, round robin over
    # the hosts the EPP would route the request to: the subset of its fallback group (the envoy.lb
    # metadata the EPP sets on the request and the EDS file on each host; the request's other keys
    # ignored), HEALTHY hosts only (panic threshold 0: never every host when most are out). A
    # request without a group, or a group without a healthy host, gets no host: Envoy's 503.
    round_robin = _typed("envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin")
    same_group = _typed(
        "envoy.extensions.load_balancing_policies.subset.v3.Subset",
        fallback_policy="NO_FALLBACK",
        subset_selectors=[{"keys": [FALLBACK_GROUP_KEY]}],
        allow_redundant_keys=True,
        subset_lb_policy=_policy("envoy.load_balancing_policies.round_robin", round_robin),
    )
    override_host = _typed(
        "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
        override_host_sources=[{"metadata": {"key": LB_NAMESPACE, **_DESTINATION_PATH}}],
        fallback_policy=_policy("envoy.load_balancing_policies.subset", same_group),
    )
    watched = str(PurePath(options.pool_eds_path).parent)
    return {
        "name": "pool",
        "type": "EDS",
        "connect_timeout": options.connect_timeout,
        "eds_cluster_config": {
            "eds_config": {
                "resource_api_version": "V3",
                # Re-read when the file is replaced by a rename into this directory.
                "path_config_source": {"path": options.pool_eds_path, "watched_directory": {"path": watched}},
            }
        },
        "load_balancing_policy": _policy("envoy.load_balancing_policies.override_host", override_host),
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


def _policy(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A load-balancing policy field holding one typed extension."""
    return {"policies": [{"typed_extension_config": {"name": name, "typed_config": config}}]}


def _side_ext_procs(options: EnvoyOptions) -> list[tuple[str, str, int, int]]:
    """The ext_proc servers beside the EPP, each consulted by its own listener with the gateway's
    filters and routes: (listener, cluster, ext_proc port, listener port)."""
    sides = [
        ("reference", REFERENCE_CLUSTER, options.reference_epp_port, options.reference_port),
        ("versus", VERSUS_CLUSTER, options.versus_epp_port, options.versus_port),
    ]
    return [(name, cluster, epp, port) for name, cluster, epp, port in sides if epp is not None]


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
    for name, cluster, _, port in _side_ext_procs(options):
        filters = _http_filters(options, cluster)
        listeners.append(_listener(name, port, _routes(options), filters, options))
    return {
        # Envoy requires a node identity for file-based EDS.
        "node": {"id": "epp-gateway", "cluster": "epp-gateway"},
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
        body = _json_error(message, kind)
        if status is None:
            return {"filter": not_from_epp, "body_format_override": body}
        comparison = {"op": "EQ", "value": {"default_value": status, "runtime_key": f"epp.reply_{status}"}}
        both: list[dict[str, Any]] = [not_from_epp, {"status_code_filter": {"comparison": comparison}}]
        if also is not None:
            both.append(also)
        return {"filter": {"and_filter": {"filters": both}}, "body_format_override": body}

    comparison = {"op": "EQ", "value": {"default_value": 429, "runtime_key": "epp.reply_429"}}
    rate_limited = {
        "and_filter": {"filters": [not_from_epp, {"status_code_filter": {"comparison": comparison}}]}
    }
    # Neither of the gateway's 429s sets a response flag: the adaptive concurrency filter's details
    # name it (a CEL filter, evaluated only with the filter on), ...
    concurrency = [
        _limit_reply(
            LIMIT_MESSAGES["concurrency"],
            "ConcurrencyLimited",
            _details(CONCURRENCY_LIMITED),
            429,
            "concurrency",
        )
    ]
    admission = [admission_control_reply()]
    # ... nor does the rate-limit quota's (a flag of a cache filter, RFCF)
    quota = [_limit_reply(LIMIT_MESSAGES["quota"], "RateLimitQuota", _details(QUOTA_LIMITED), 429, "quota")]
    # ext_proc's failures (status_on_error 503) have an empty body and no response flag.
    # An HTTP/1 protocol error (Envoy's codec answers it, then closes the connection) is marked
    # for ext_proc to pass: the EPP routed nothing, and the connection cannot wait for it.
    protocol_error = {
        "filter": _details_start("http1."),
        "headers_to_add": [
            {
                "header": {"key": PROTOCOL_ERROR_HEADER, "value": "true"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "body_format_override": _json_error(
            "%LOCAL_REPLY_BODY%: the gateway could not read the request as HTTP/1 (%RESPONSE_CODE_DETAILS%)",
            "%RESPONSE_CODE_DETAILS%",
        ),
    }
    return {
        "mappers": [
            protocol_error,
            *_silent_refusals(options),
            *(concurrency if options.adaptive_concurrency else []),
            *(admission if options.admission_control_aggression > 0 else []),
            *(quota if options.quota_from_epp else []),
            # ... and any other 429 not from the EPP (whose own carry its key) is the rate limit's.
            _limit_reply(
                LIMIT_MESSAGES["rate"].format(rate=options.rate_limit),
                "RateLimited",
                rate_limited,
                429,
                "rate",
            ),
            _limit_reply(LIMIT_MESSAGES["pool"], "Overflow", {"response_flag_filter": {"flags": ["UO"]}}),
            # The router's 503s (a reset, a refused connection) carry a response flag: those of the
            # model server's connection name it (Envoy's own text, "upstream connect error or
            # disconnect/reset before headers", names nobody) ...
            mapper(
                "the model server %UPSTREAM_HOST% closed, reset or refused the connection before "
                "responding, on every attempt: %LOCAL_REPLY_BODY%",
                503,
                also={"response_flag_filter": {"flags": ["UF", "UC", "UR", "URX", "UPE"]}},
            ),
            # ... the rest (no healthy upstream, ...) say what they are.
            mapper("%LOCAL_REPLY_BODY%", 503, also={"response_flag_filter": {}}),
            # ... ext_proc's failures (status_on_error) and the fail-closed route's reply none.
            mapper(LIMIT_MESSAGES["epp"], 503),
            # The route's timeouts set UT: the EPP had answered, the model server did not.
            mapper(
                f"the model server sent no response in time (the gateway waits {options.response_timeout} "
                f"for a non-streaming response, {options.first_byte_timeout} for a streaming one's "
                "first byte on each attempt)",
                504,
                also={"response_flag_filter": {"flags": ["UT"]}},
            ),
            mapper("no answer in time from the endpoint picker or the model server", 504),
            # Only a path outside the policy is a local 404 here: the EPP's own carry its key.
            mapper("inference error: NotFound - %LOCAL_REPLY_BODY%", 404, kind="NotFound"),
            mapper("%LOCAL_REPLY_BODY%"),
        ]
    }


def _silent_refusals(options: EnvoyOptions) -> list[dict[str, Any]]:
    """Envoy's refusals that carry no text of their own (their JSON said `"message": ""`, or a
    CONNECT's "inference error: NotFound - "), each with what was wrong."""
    routed = "every path" if options.allowed_paths == ("/",) else ", ".join(options.allowed_paths)
    if options.allowed_paths != ("/",):
        routed += " and the paths under them"
    messages = {
        "missing_host_header": ("%RESPONSE_CODE_DETAILS%", "an HTTP/1.1 request needs a Host header"),
        "low_version": (
            "%RESPONSE_CODE_DETAILS%",
            "the gateway speaks HTTP/1.1 and HTTP/2, not HTTP/1.0 or an unknown version",
        ),
        "upgrade_failed": (
            "%RESPONSE_CODE_DETAILS%",
            "the gateway upgrades no connection (upgrade: %REQ(UPGRADE)%): send the request "
            "without an Upgrade header",
        ),
        "route_not_found": (
            "NotFound",
            f"inference error: NotFound - the gateway has no route for a %REQ(:METHOD)% request: "
            f"it routes {routed}",
        ),
        # normalize_path's refusal (%00 decoded, or a fragment: clients strip it before sending).
        "path_normalization_failed": (
            "%RESPONSE_CODE_DETAILS%",
            "the gateway could not normalise the path %REQ(:PATH)%: a path cannot hold an encoded NUL "
            "character or a fragment (#)",
        ),
        # An HTTP/1 Host with spaces, slashes, ... (HTTP/2's :authority resets the stream): Envoy's
        # text says "Bad Request" only.
        "http.invalid_authority": (
            "%RESPONSE_CODE_DETAILS%",
            "the request's Host header is not a host name or address with an optional port",
        ),
        # A path not starting with "/", such as OPTIONS's "*".
        "absolute_path_rejected": (
            "NotFound",
            f"inference error: NotFound - the gateway has no route for the path %REQ(:PATH)%: it routes "
            f"{routed}",
        ),
    }
    return [
        {"filter": _details(details), "body_format_override": _json_error(message, kind)}
        for details, (kind, message) in messages.items()
    ]


def _limit_reply(
    message: str, kind: str, matcher: dict[str, Any], status: int = 503, limit: str | None = None
) -> dict[str, Any]:
    """A local reply mapper: a limit's refusal as JSON naming it, with Retry-After (and LIMIT_HEADER)."""
    headers = [("retry-after", "1")] if limit is None else [("retry-after", "1"), (LIMIT_HEADER, limit)]
    return {
        "filter": matcher,
        "status_code": status,
        "headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in headers
        ],
        "body_format_override": _json_error(message, f"{kind} - %RESPONSE_CODE_DETAILS%", status),
    }


def _json_error(message: str, kind: str, code: int | str = "%RESPONSE_CODE%") -> dict[str, Any]:
    """A local reply's body as the OpenAI-style JSON error the EPP's own answers have."""
    return {
        "json_format": {"error": {"message": message, "type": kind, "code": code}},
        "content_type": "application/json",
    }


def admission_control_reply() -> dict[str, Any]:
    """The admission control filter's refusal (Envoy's 503, which names it only in its details) as
    a JSON 429 naming the limit. Also in the gateway manifests' admission-control patches."""
    return _limit_reply(
        LIMIT_MESSAGES["admission"], "AdmissionControl", _details(ADMISSION_REFUSED), 429, "admission"
    )


def _details(details: str) -> dict[str, Any]:
    """An access-log filter matching Envoy's response code details."""
    return _cel(f"response.code_details == '{details}'")


def _details_start(prefix: str) -> dict[str, Any]:
    """An access-log filter matching Envoy's response code details that start with `prefix`."""
    return _cel(f"response.code_details.startsWith('{prefix}')")


def _cel(expression: str) -> dict[str, Any]:
    """An access-log filter: a CEL expression over the request and response."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": _typed(
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter", expression=expression
            ),
        }
    }


# Names the gateway's limit that refused a request (`rate`, `concurrency`), on its 429.
LIMIT_HEADER = "x-gateway-limit"
# On Envoy's 400 for a request that is not valid HTTP/1 (its codec's error): ext_proc skips it.
PROTOCOL_ERROR_HEADER = "x-gateway-protocol-error"
# The adaptive concurrency filter's response code details for a request it refused.
CONCURRENCY_LIMITED = "reached_concurrency_limit"
# The admission control filter's response code details for a request it refused.
ADMISSION_REFUSED = "denied_by_admission_control"
# The rate_limit_quota filter's response code details for a request its bucket refused.
QUOTA_LIMITED = "rate_limited_by_quota"
# How often the rate_limit_quota filter is to report its counts to the EPP (Envoy 1.40 reports every
# 5 s whatever this says; the EPP pushes its limits without waiting for reports: epp.extproc.rlqs).
QUOTA_REPORTING_INTERVAL = "1s"
LIMIT_MESSAGES = {
    "admission": "the gateway refused the request before the endpoint picker, as the endpoint picker "
    "refused recent requests for overload (admission control); retry later",
    "concurrency": "the gateway's adaptive concurrency limit was reached (latency through the endpoint "
    "picker and the model servers rose above what it measured at low concurrency); retry later",
    "quota": "the gateway's limit of requests per second assigned by the endpoint picker while it is "
    "overloaded (rate-limit quota, refused before the endpoint picker); retry later",
    "rate": "the gateway's limit of {rate} requests per second was reached (local rate limit before the "
    "endpoint picker); retry later",
    "pool": "the gateway's limit of concurrent requests to the model servers was reached "
    "(circuit breaker of cluster pool: max_requests / max_pending_requests / max_connections); retry later",
    "epp": f"{EPP_UNREACHABLE}, or the gateway's limit of concurrent calls to it "
    "was reached (circuit breaker of cluster epp)",
}


EXT_PROC_ON = {
    EXT_PROC_FILTER: _typed(
        "envoy.config.route.v3.FilterConfig",
        config=_typed("envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", overrides={}),
    )
}
"""The virtual host's switch for ext_proc, off in the filter chain: every routed request runs it."""


def _listener(
    name: str, port: int, routes: list[dict[str, Any]], filters: list[dict[str, Any]], options: EnvoyOptions
) -> dict[str, Any]:
    ext_proc = any(f["name"] == EXT_PROC_FILTER for f in filters)
    manager = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=name,
        codec_type="AUTO",
        # A local 400 (the EPP's, for a bad body) otherwise closes the client's HTTP/1.1
        # connection, and any HTTP/2 stream's invalid message the whole connection; framing
        # errors of HTTP/1 still close it (the codec cannot resynchronise).
        stream_error_on_invalid_http_message=True,
        # The path policy matches the path as the model server will see it.
        normalize_path=True,
        merge_slashes=True,
        route_config={
            "virtual_hosts": [
                {
                    "name": "pool",
                    "domains": ["*"],
                    "routes": routes,
                    # Which endpoint served, after retries: the EPP reads it on the response path.
                    "response_headers_to_add": [
                        {
                            "header": {"key": SERVED_KEY, "value": "%UPSTREAM_HOST%"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }
                    ],
                    # The marks of the gateway's own replies, which ext_proc skips (_skipped_when): a
                    # model server's answer carrying one would pass the EPP by.
                    "response_headers_to_remove": [PROTOCOL_ERROR_HEADER, LIMIT_HEADER],
                    **({"typed_per_filter_config": EXT_PROC_ON} if ext_proc else {}),
                }
            ]
        },
        http_filters=filters,
        local_reply_config=_local_replies(options),
        request_headers_timeout=options.request_headers_timeout,
        request_timeout=options.request_timeout,
    )
    return {
        "name": name,
        "address": _socket(options.listen_address, port),
        # Envoy's default, SO_REUSEPORT, lets a second gateway on the host bind a port this one
        # holds, or this one bind another's, without an error: the kernel then splits the clients'
        # connections between two gateways and their pools. Without it, a taken port fails Envoy's
        # start ("cannot bind ...: Address already in use").
        "enable_reuse_port": False,
        "per_connection_buffer_limit_bytes": options.buffer_limit_bytes,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
