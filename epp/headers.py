"""Names of the headers and metadata keys the EPP, the gateway and the sidecar agree on
(GIE's endpoint-picker protocol and llm-d's P/D contract), defined once."""

from collections.abc import Mapping

# The endpoint the EPP picked: request header and, with the same value, envoy.lb dynamic metadata.
DESTINATION_HEADER = "x-gateway-destination-endpoint"
# llm-d's --emit-endpoint-scores: the primary profile's total per `host:port`, in envoy.lb too.
DESTINATION_SCORES_KEY = "x-gateway-destination-endpoint-scores"
LB_NAMESPACE = "envoy.lb"
# Set in that namespace with every error the EPP answers itself, so the gateway can tell them from
# its own local replies (which it rewrites as JSON) and leave them as they are.
EPP_ERROR_KEY = "x-epp-error"
# The data plane's hint restricting candidates (metadata namespace and key).
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
# The endpoint that served the request, after the gateway's retries (GIE's key; our Envoy bootstrap
# sets it as a response header from %UPSTREAM_HOST%).
SERVED_KEY = "x-gateway-destination-endpoint-served"
# Set by the EPP in the envoy.lb metadata of a streaming request (our Envoy bootstrap bounds its
# time to first byte per attempt instead of the whole response).
STREAMING_KEY = "x-epp-streaming"
# Set by the EPP in the envoy.lb metadata of a routed request, and in its Envoy EDS file on each
# host: the primary endpoint's fallback group (the models it serves). Our bootstrap's retries,
# once the EPP's list is used up, go only to healthy hosts of that group.
FALLBACK_GROUP_KEY = "x-epp-fallback-group"
# Set on a request the decode endpoint's routing sidecar must prefill on this endpoint first.
PREFILLER_HEADER = "x-prefiller-host-port"
# The P/D and data-parallel routing instructions llm-d's sidecar reads (besides PREFILLER_HEADER).
PREFILLER_URL_HEADER = "x-prefiller-url"
ENCODER_HOSTS_HEADER = "x-encoder-hosts-ports"
DATA_PARALLEL_HEADER = "x-data-parallel-host-port"
KV_CACHE_SOURCE_HEADER = "x-kv-cache-source-host-port"
# Headers only the EPP may set: a client-sent copy is removed so it can never steer routing.
OWNED_HEADERS = (
    DESTINATION_HEADER,
    SERVED_KEY,
    SUBSET_KEY,
    PREFILLER_HEADER,
    PREFILLER_URL_HEADER,
    ENCODER_HOSTS_HEADER,
    DATA_PARALLEL_HEADER,
    KV_CACHE_SOURCE_HEADER,
)

# Request headers clients and gateways send the EPP (GIE's protocol).
REQUEST_ID_HEADER = "x-request-id"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
MODEL_REWRITE_HEADER = "x-gateway-model-name-rewrite"
# llm-d-router's names for the same three (ebab687, metadata/consts.go), read first: it keeps GIE's
# as their deprecated aliases.
LLMD_OBJECTIVE_HEADER = "x-llm-d-inference-objective"
LLMD_FAIRNESS_HEADER = "x-llm-d-inference-fairness-id"
LLMD_MODEL_REWRITE_HEADER = "x-llm-d-model-name-rewrite"


def either_header(headers: Mapping[str, str], current: str, deprecated: str) -> str | None:
    """A header under llm-d's current name, else under its deprecated one (GIE's), as llm-d reads
    them: the first present wins, even empty."""
    value = headers.get(current)
    return headers.get(deprecated) if value is None else value


# The ids of the buckets of the gateway's rate_limit_quota filter (our Envoy bootstrap) and the
# EPP's rate-limit quota service: `name: inference`, plus `objective: NAME` in an objective's own
# bucket, whose priority the EPP looks up by that name.
QUOTA_BUCKET = "inference"
QUOTA_OBJECTIVE_KEY = "objective"

# Response headers the simulator adds, naming the server that answered (tests and benchmarks).
SIM_POD_HEADER = "x-inference-pod"
SIM_PORT_HEADER = "x-inference-port"
SIM_HOST_HEADER = "x-inference-host"

# A client asking for the explanation of its routing decision (honoured only with
# `--decision-explain-header`), and the response header that carries it (JSON).
EXPLAIN_HEADER = "x-epp-explain"
EXPLANATION_HEADER = "x-epp-explanation"
