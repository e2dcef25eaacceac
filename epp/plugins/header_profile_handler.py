"""`header-profile-handler` (llm-d): run the one scheduling profile a request header names.

As llm-d's: with a single profile, run it; otherwise run the profile named by the header
`headerName` (default `EPP-Profile`, matched lower-cased), or `defaultProfile` (default `decode`)
when the header is absent or blank. A name that is not a configured profile fails the request
(429: `header profile handler: no scheduling profile configured for "<header>" header value
"<value>"`, or `defaultProfile "<name>" is not a configured scheduling profile`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epp.explain import clip
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import ProfileHandler
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult


class HeaderProfileParams(PluginParams):
    header_name: str = ""
    default_profile: str = ""


@register
class HeaderProfileHandler(Plugin, ProfileHandler):
    type_name = "header-profile-handler"
    Params = HeaderProfileParams

    def __init__(self, name: str, params: HeaderProfileParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.header = params.header_name.strip().lower() or "epp-profile"
        self.default = params.default_profile.strip() or "decode"

    def pick_profiles(
        self,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        if results:
            return ()
        if len(profiles) == 1:
            return tuple(profiles)
        chosen = self._header(request) or self.default
        return (chosen,) if chosen in profiles else ()

    def process_results(
        self, request: InferenceRequest, results: Mapping[str, ProfileResult | None]
    ) -> SchedulingResult:
        if not results:
            value = self._header(request)
            if not value:
                raise SchedulingError(
                    f"header profile handler: defaultProfile {self.default!r} is not a configured "
                    "scheduling profile"
                )
            raise SchedulingError(  # the value as records keep it: a client's header may be 60 KB
                f"header profile handler: no scheduling profile configured for {self.header!r} "
                f"header value {clip(value)!r}"
            )
        if len(results) > 1:
            raise SchedulingError(
                f"header profile handler is intended to run a single profile per request, got {len(results)}"
            )
        name, result = next(iter(results.items()))
        if result is None:
            raise SchedulingError(f"failed to run scheduler profile {name!r}")
        return SchedulingResult({name: result}, name)

    def _header(self, request: InferenceRequest) -> str:
        return request.headers.get(self.header, "").strip()
