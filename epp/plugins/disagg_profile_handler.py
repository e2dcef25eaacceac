"""`disagg-profile-handler` (legacy `pd-profile-handler`): prefill/decode disaggregation.

Decode-first (the default): run the decode profile; ask the prefill decider whether the request
should be prefilled elsewhere given the chosen decode endpoint; only then run the prefill profile.
Deciding after the decode pick is what makes a prefix-aware decider possible: what is worth
shipping depends on what that decode pod already caches. Prefill-first runs the prefill profile
whenever it exists (no decider), then decode.

The destination is always the decode pick. When a prefill endpoint was chosen, the request carries
`x-prefiller-host-port: <ip>:<port>` (IPv6 bracketed) for the decode pod's routing sidecar. On a
decode-only decision the header is absent from the result, and the protocol layer removes any
client-sent copy (an EPP-owned header), so a client can never steer the sidecar's prefill leg.
A prefill profile that finds nobody degrades to decode-only; no decode endpoint is an error.

Encode stage (E/P/D, with an encode decider, `deciders.encode` or `encodeDeciderPluginName`): as
llm-d's, decode-first asks it after the decode pick and before the prefill decider; prefill-first
asks it after the prefill profile with no decode endpoint yet. When it says yes the encode profile
runs and the request carries `x-encoder-hosts-ports` with all its picks, comma-separated. The EPP
only chooses the encoders; calling them is the routing sidecar's part.

`pd-profile-handler`'s `primaryPort` (llm-d's data-parallel rank routing): the destination uses
that port and `x-data-parallel-host-port` names the decode rank picked, as in llm-d."""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from epp.datastore import Endpoint
from epp.framework import (
    ImpliedPlugin,
    ParameterUpgrade,
    Plugin,
    PluginContext,
    PluginParams,
    PluginReference,
    PluginUser,
    register,
)
from epp.headers import DATA_PARALLEL_HEADER, ENCODER_HOSTS_HEADER, PREFILLER_HEADER
from epp.params.strict import StrictModel
from epp.requests import ApiKind, InferenceRequest
from epp.requests.tokenids import are_ints
from epp.scheduling.disagg import PEER_ENDPOINT, PrefillDecider, decision_type
from epp.scheduling.framework import ProfileHandler
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult

log = logging.getLogger(__name__)


class StageOrder(enum.StrEnum):
    DECODE_FIRST = "decode-first"
    PREFILL_FIRST = "prefill-first"


_STAGE_SPELLINGS = {
    "decodefirst": StageOrder.DECODE_FIRST,
    "decode": StageOrder.DECODE_FIRST,
    "prefillfirst": StageOrder.PREFILL_FIRST,
    "prefill": StageOrder.PREFILL_FIRST,
}


class ProfileNames(StrictModel):
    decode: str = "decode"
    prefill: str = "prefill"
    encode: str = "encode"  # accepted; the encode stage only runs with an encode decider


class DeciderNames(StrictModel):
    prefill: str = ""
    encode: str = ""


NESTED_KEYS = ("stage_order", "profiles", "deciders")
LEGACY_KEYS = (
    "decode_profile",
    "prefill_profile",
    "encode_profile",
    "prefill_decider_plugin_name",
    "encode_decider_plugin_name",
    "decider_plugin_name",
    "primary_port",
    "prefix_plugin_type",
    "prefix_plugin_name",
)
IGNORED_LEGACY_KEYS = ("prefix_plugin_type", "prefix_plugin_name")


class DisaggParams(PluginParams):
    """llm-d's nested form, or its legacy flat keys (not both in one config, as llm-d's fallback
    decoding cannot mix them either)."""

    stage_order: str = StageOrder.DECODE_FIRST.value
    profiles: ProfileNames = ProfileNames()
    deciders: DeciderNames = DeciderNames()
    decode_profile: str | None = None
    prefill_profile: str | None = None
    encode_profile: str | None = None
    prefill_decider_plugin_name: str | None = None
    encode_decider_plugin_name: str | None = None
    decider_plugin_name: str | None = None  # older spelling of prefillDeciderPluginName
    primary_port: int | None = Field(default=None, ge=1, le=65535)  # pd-profile-handler's data-parallel port
    prefix_plugin_type: str | None = None  # v0.1-v0.5 threshold logic, now in the decider: ignored
    prefix_plugin_name: str | None = None

    @classmethod
    def upgrade(cls, raw: Mapping[str, Any], type_name: str = "") -> ParameterUpgrade:
        """llm-d v0.1-v0.5 `pd-profile-handler` decided P/D itself: `threshold` (characters of
        the prompt not cached on the decode pod; default 0 = always prefill remotely) and
        `hashBlockSize`. That decision is a decider plugin now, so `threshold` becomes one; a
        `pd-profile-handler` naming no decider gets the one llm-d v0.5-v0.8 defaulted to (always
        prefill remotely; the router now refuses such a config). `deciderPluginName` is the older
        spelling of `prefillDeciderPluginName`."""
        upgrade = super().upgrade(raw, type_name)
        params = upgrade.parameters
        decider_keys = ("deciderPluginName", "prefillDeciderPluginName", "deciders", "stageOrder", "profiles")
        if type_name == "pd-profile-handler" and not any(k in params for k in (*decider_keys, "threshold")):
            upgrade.implied.append(ImpliedPlugin("always-disagg-pd-decider"))
            params["deciderPluginName"] = "always-disagg-pd-decider"
            upgrade.warnings.append(
                "pd-profile-handler names no decider: read as an always-disagg-pd-decider (llm-d v0.5-v0.8 "
                "always prefilled remotely then; name a decider to choose)"
            )
        if "deciderPluginName" in raw:
            upgrade.warnings.append("deciderPluginName is deprecated: read as prefillDeciderPluginName")
        ignored = [to_camel(k) for k in IGNORED_LEGACY_KEYS if to_camel(k) in params]
        if ignored:
            upgrade.warnings.append(
                f"{', '.join(ignored)} (llm-d <= v0.5: the prefix plugin of the old threshold logic) ignored"
            )
        if "hashBlockSize" in params:
            params.pop("hashBlockSize")
            upgrade.warnings.append(
                "hashBlockSize (llm-d <= v0.5) is ignored: the prefix block size is a parameter of the "
                "prefix plugin (approx-prefix-cache-producer / prefix-cache-scorer)"
            )
        if "threshold" not in params:
            return upgrade
        threshold = params.pop("threshold")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
            upgrade.problems.append(f"threshold: expected a non-negative integer, got {threshold!r}")
            return upgrade
        named = [k for k in decider_keys[:3] if k in params]
        if named:
            upgrade.warnings.append(f"threshold (llm-d <= v0.5) is ignored because {named[0]} is set")
            return upgrade
        if threshold == 0:
            decider = ImpliedPlugin("always-disagg-pd-decider")
            meaning = "always prefill remotely"
        else:
            tokens = max(1, threshold // 4)
            decider = ImpliedPlugin("prefix-based-pd-decider", {"nonCachedTokens": tokens})
            meaning = f"prefill remotely when >= {tokens} prompt tokens (threshold / 4) are not cached"
        upgrade.implied.append(decider)
        params["deciderPluginName"] = decider.type_name
        upgrade.warnings.append(
            f"threshold {threshold} (llm-d <= v0.5) is deprecated: read as decider {decider.type_name} "
            f"({meaning})"
        )
        return upgrade

    @field_validator("stage_order")
    @classmethod
    def _stage_order(cls, value: str) -> str:
        order = _STAGE_SPELLINGS.get(value.lower().replace("-", "").replace("_", ""))
        if order is None:
            raise ValueError(f"stageOrder must be decode-first or prefill-first, got {value!r}")
        return order.value

    @model_validator(mode="after")
    def _consistent(self) -> DisaggParams:
        nested = [to_camel(k) for k in NESTED_KEYS if k in self.model_fields_set]
        legacy = [to_camel(k) for k in LEGACY_KEYS if k in self.model_fields_set]
        if nested and legacy:
            raise ValueError(
                f"use either the nested form ({', '.join(nested)}) or the legacy flat keys "
                f"({', '.join(legacy)}), not both"
            )
        old, new = self.decider_plugin_name, self.prefill_decider_plugin_name
        if old is not None and new is not None and old != new:
            raise ValueError("deciderPluginName and prefillDeciderPluginName name different plugins")
        old_encode, new_encode = self.encode_decider_plugin_name, self.deciders.encode
        if old_encode and new_encode and old_encode != new_encode:
            raise ValueError("encodeDeciderPluginName and deciders.encode name different plugins")
        if self.prefill_decider and self.stage_order == StageOrder.PREFILL_FIRST:
            raise ValueError(
                "a prefill decider needs stageOrder decode-first (prefill-first always prefills)"
            )
        return self

    @property
    def decode(self) -> str:
        return self.decode_profile if self.decode_profile is not None else self.profiles.decode

    @property
    def prefill(self) -> str:
        return self.prefill_profile if self.prefill_profile is not None else self.profiles.prefill

    @property
    def prefill_decider(self) -> str:
        return self.prefill_decider_plugin_name or self.decider_plugin_name or self.deciders.prefill

    @property
    def encode(self) -> str:
        return self.encode_profile if self.encode_profile is not None else self.profiles.encode

    @property
    def encode_decider(self) -> str:
        return self.encode_decider_plugin_name or self.deciders.encode

    @property
    def encode_decider_key(self) -> str:
        return "encodeDeciderPluginName" if self.encode_decider_plugin_name else "deciders.encode"

    @property
    def prefill_decider_key(self) -> str:
        """Where the decider was named, for error messages."""
        if self.prefill_decider_plugin_name:
            return "prefillDeciderPluginName"
        return "deciderPluginName" if self.decider_plugin_name else "deciders.prefill"


@register
class DisaggProfileHandler(Plugin, ProfileHandler, PluginUser):
    type_name = "disagg-profile-handler"
    aliases = ("pd-profile-handler",)
    Params = DisaggParams

    def __init__(self, name: str, params: DisaggParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.decode_profile = params.decode
        self.prefill_profile = params.prefill
        self.prefill_first = params.stage_order == StageOrder.PREFILL_FIRST
        self.decider_name = params.prefill_decider
        self.decider: PrefillDecider | None = None  # None: decode-first never prefills remotely
        self.encode_profile = params.encode
        self.encode_decider_name = params.encode_decider
        self.encode_decider: PrefillDecider | None = None  # None: no encode stage
        self.primary_port = params.primary_port
        self._metrics = context.metrics
        self._counters = (context.metrics.pd_decisions, context.metrics.disagg_decisions)

    @classmethod
    def profile_problems(cls, params: Any, profiles: Sequence[str]) -> list[str]:
        assert isinstance(params, DisaggParams)
        known = ", ".join(profiles)
        problems = []
        if params.decode not in profiles:
            problems.append(
                f"decode profile {params.decode!r} is not among the scheduling profiles ({known})"
            )
        prefills = bool(params.prefill_decider) or params.stage_order == StageOrder.PREFILL_FIRST
        if prefills and params.prefill not in profiles:
            problems.append(
                f"prefill profile {params.prefill!r} is not among the scheduling profiles ({known}), "
                "so requests would never be prefilled remotely"
            )
        if params.encode_decider and params.encode not in profiles:
            problems.append(
                f"encode profile {params.encode!r} is not among the scheduling profiles ({known}), "
                "so requests would never be encoded remotely"
            )
        return problems

    @classmethod
    def referenced_plugins(cls, params: Any) -> list[PluginReference]:
        assert isinstance(params, DisaggParams)
        refs = []
        if params.prefill_decider:
            refs.append(
                PluginReference(
                    params.prefill_decider_key, params.prefill_decider, PrefillDecider, "a prefill decider"
                )
            )
        if params.encode_decider:
            refs.append(
                PluginReference(params.encode_decider_key, params.encode_decider, PrefillDecider, "a decider")
            )
        return refs

    def use_plugins(self, plugins: Mapping[str, Plugin]) -> None:
        if self.decider_name:
            decider = plugins[self.decider_name]
            assert isinstance(decider, PrefillDecider)
            self.decider = decider
        if self.encode_decider_name:
            encoder = plugins[self.encode_decider_name]
            assert isinstance(encoder, PrefillDecider)
            self.encode_decider = encoder

    def pick_profiles(
        self,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        decode, prefill = self.decode_profile, self.prefill_profile
        if self.prefill_first:
            if decode in results:
                return ()
            if prefill in profiles and prefill not in results and _prefillable(request):
                return (prefill,)
            if self._encode_now(request, profiles, results, None):
                return (self.encode_profile,)
            prefilled = results.get(prefill)
            if prefilled is not None and prefilled.targets:
                request.attributes[PEER_ENDPOINT] = prefilled.targets[0]
            return (decode,) if decode in profiles else ()
        if decode not in results:
            return (decode,) if decode in profiles else ()
        chosen = results[decode]
        if chosen is None or not chosen.targets:
            return ()
        if self._encode_now(request, profiles, results, chosen.targets[0]):
            return (self.encode_profile,)
        if prefill in results or prefill not in profiles or self.decider is None:
            return ()
        if request.api is ApiKind.EMBEDDINGS or not _prefillable(request):
            return ()
        if not self.decider.disaggregate(request, chosen.targets[0]):
            return ()
        request.attributes[PEER_ENDPOINT] = chosen.targets[0]
        return (prefill,)

    def _encode_now(
        self,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
        decode: Endpoint | None,
    ) -> bool:
        """Whether the encode stage runs next: an encode profile and decider exist, the stage has
        not been decided for this request yet, and the decider says yes (asked once)."""
        if (
            self.encode_decider is None
            or self.encode_profile not in profiles
            or self.encode_profile in results
        ):
            return False
        asked = f"{self.name}/encode-decided"
        if asked in request.attributes:
            return False
        request.attributes[asked] = True
        return self.encode_decider.disaggregate(request, decode)

    def process_results(
        self, request: InferenceRequest, results: Mapping[str, ProfileResult | None]
    ) -> SchedulingResult:
        decode = results.get(self.decode_profile)
        if decode is None or not decode.targets:
            raise SchedulingError(
                f"failed to find available decode workers (profile {self.decode_profile!r})"
            )
        result = SchedulingResult({self.decode_profile: decode}, self.decode_profile)
        prefill = results.get(self.prefill_profile)
        # A prefill pick equal to the decode pick (a `both` pod) would ship the KV to itself.
        prefilled = (
            prefill is not None and bool(prefill.targets) and prefill.targets[0] is not decode.targets[0]
        )
        if prefilled:
            assert prefill is not None
            result.profile_results[self.prefill_profile] = prefill
            result.headers[PREFILLER_HEADER] = prefill.targets[0].hostport
        encode = results.get(self.encode_profile) if self.encode_decider is not None else None
        if encode is not None and encode.targets:
            result.profile_results[self.encode_profile] = encode
            result.headers[ENCODER_HOSTS_HEADER] = ",".join(e.hostport for e in encode.targets)
        if self.primary_port is not None:
            # llm-d's pd-profile-handler with primaryPort: data-parallel rank routing of the decode leg.
            result.destination_port = self.primary_port
            result.headers[DATA_PARALLEL_HEADER] = decode.targets[0].hostport
        decision = decision_type(encode is not None and bool(encode.targets), prefilled)
        target = self._metrics.series(request.model, request.target_model).target_label
        for counter in self._counters:
            counter.labels(self.name, self.type_name, target, decision).inc()
        return result


def _prefillable(request: InferenceRequest) -> bool:
    """Whether a prefill pod can compute the request's prompt and hand it over."""
    return _one_sequence(request) and not _continues_stored_state(request)


def _continues_stored_state(request: InferenceRequest) -> bool:
    """A Responses request whose prompt starts with a stored response or conversation: vLLM keeps
    those in the process that answered them, so a prefiller answers 404 "Response with id ... not
    found" (llm-d's sidecar relays it to the client) and the request goes decode-only."""
    body = request.body
    return request.api is ApiKind.RESPONSES and (
        body.get("previous_response_id") is not None or body.get("conversation") is not None
    )


def _one_sequence(request: InferenceRequest) -> bool:
    """Whether the request generates one sequence from one prompt, all a remote prefill can hand
    over: vLLM's NixlConnector returns one request's KV blocks (its `n` > 1 support is unmerged,
    vllm#38900), so `n` > 1 or a list of prompts goes decode-only instead of failing in P/D
    (the simulator's prefill leg: 400 "P/D transfer supports a single prompt and n=1 per request")."""
    n = request.body.get("n")
    if isinstance(n, int | float) and n > 1:
        return False
    prompt = request.body.get("prompt") if request.api is ApiKind.COMPLETIONS else None
    return not (isinstance(prompt, list) and len(prompt) > 1 and not are_ints(prompt))
