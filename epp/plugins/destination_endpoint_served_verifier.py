"""`destination-endpoint-served-verifier` (GIE conformance, test plugin): report which endpoint the
gateway says actually served the request.

When the model server's response headers pass through, a conforming gateway attaches
`envoy.lb` / `x-gateway-destination-endpoint-served: <ip:port>` to the ext_proc message's
metadata. As GIE's: copy that value into the response header
`x-conformance-test-served-endpoint`; without `envoy.lb` metadata the header says
`fail: missing envoy lb metadata`, without the key `fail: missing destination endpoint served
metadata`. GIE's conformance test compares it with the endpoint it asked for (through
`header-based-testing-filter`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.framework import Plugin, register
from epp.headers import LB_NAMESPACE, SERVED_KEY
from epp.requestcontrol import ResponseHeaderProcessor
from epp.requests import InferenceRequest
from epp.scheduling.types import SchedulingResult

RESULT_HEADER = "x-conformance-test-served-endpoint"


@register
class DestinationEndpointServedVerifier(Plugin, ResponseHeaderProcessor):
    type_name = "destination-endpoint-served-verifier"

    def response_headers(
        self,
        request: InferenceRequest,
        result: SchedulingResult,
        metadata: Mapping[str, Mapping[str, Any]],
    ) -> None:
        lb = metadata.get(LB_NAMESPACE)
        if not isinstance(lb, Mapping):
            result.response_headers[RESULT_HEADER] = "fail: missing envoy lb metadata"
            return
        served = lb.get(SERVED_KEY)
        if not isinstance(served, str):
            result.response_headers[RESULT_HEADER] = "fail: missing destination endpoint served metadata"
            return
        result.response_headers[RESULT_HEADER] = served
