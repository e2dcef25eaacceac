"""Names of the headers and metadata keys the EPP, the gateway and the sidecar agree on
(GIE's endpoint-picker protocol and llm-d's P/D contract), defined once."""

# The endpoint the EPP picked: request header and, with the same value, envoy.lb dynamic metadata.
DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
# Set in that namespace with every error the EPP answers itself, so the gateway can tell them from
# its own local replies (which it rewrites as JSON) and leave them as they are.
EPP_ERROR_KEY = "x-epp-error"
# The data plane's hint restricting candidates (metadata namespace and key).
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"
# Set on a request the decode endpoint's routing sidecar must prefill on this endpoint first.
PREFILLER_HEADER = "x-prefiller-host-port"
