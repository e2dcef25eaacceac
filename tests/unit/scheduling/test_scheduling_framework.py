"""The framework's contract (GIE semantics): filters in order with early stop, clamped scores
added with absolute weights, failed profiles, the profile-handler loop, hooks once each."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from epp.datalayer import DataProducer
from epp.datastore import Endpoint
from epp.framework import DataKey, Plugin
from epp.framework.registry import canonical_type_names, plugin_types, register
from epp.metrics.exporter import EppMetrics
from epp.plugins.max_score_picker import MaxScorePicker
from epp.plugins.single_profile_handler import SingleProfileHandler
from epp.requestcontrol import PreRequest, RequestControlHooks, ResponseComplete, ResponseReceived
from epp.requests import InferenceRequest, Usage
from epp.scheduling.framework import Filter, Picker, PluginScheduler, ProfileHandler, SchedulerProfile, Scorer
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult
from tests.unit.plugin_helpers import context, endpoints, request

CTX = context()


class FixedScorer(Plugin, Scorer):
    type_name = "fixed-scorer"

    def __init__(self, name: str, scores: Sequence[float]) -> None:
        super().__init__(name, None, CTX)
        self.scores = scores
        self.seen: list[list[str]] = []

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> Sequence[float]:
        self.seen.append([e.name for e in candidates])
        by_name = dict(zip((f"e{i}" for i in range(len(self.scores))), self.scores, strict=True))
        return [by_name[e.name] for e in candidates]


class DropFilter(Plugin, Filter):
    type_name = "drop-filter"

    def __init__(self, name: str, drop: set[str]) -> None:
        super().__init__(name, None, CTX)
        self.drop = drop
        self.calls = 0

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        self.calls += 1
        return [e for e in candidates if e.name not in self.drop]


class RecordingPicker(Plugin, Picker):
    """Picks the best and remembers the totals it was given."""

    type_name = "recording-picker"

    def __init__(self) -> None:
        super().__init__("picker", None, CTX)
        self.totals: dict[str, float] = {}

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        self.totals = {e.name: s for e, s in zip(candidates, scores, strict=True)}
        return [max(zip(candidates, scores, strict=True), key=lambda pair: pair[1])[0]]


def run_profile(
    filters: list[Filter], scorers: list[tuple[Scorer, float]], candidates: list[Endpoint]
) -> Any:
    picker = RecordingPicker()
    profile = SchedulerProfile("p", filters, scorers, picker, EppMetrics())
    return profile.run(request(), candidates), picker.totals


def test_weighted_sum_uses_absolute_weights() -> None:
    queue = FixedScorer("a", [1.0, 0.5, 0.0])
    kv = FixedScorer("b", [0.0, 1.0, 0.25])
    result, totals = run_profile([], [(queue, 2.0), (kv, 3.0)], endpoints(3))
    assert totals == {"e0": 2.0, "e1": 4.0, "e2": 0.75}
    assert [e.name for e in result.targets] == ["e1"]


def test_scores_are_clamped_to_unit_interval_and_nan_counts_as_zero() -> None:
    wild = FixedScorer("w", [7.0, -3.0, math.nan])
    _, totals = run_profile([], [(wild, 2.0)], endpoints(3))
    assert totals == {"e0": 2.0, "e1": 0.0, "e2": 0.0}


def test_no_scorers_gives_every_candidate_zero() -> None:
    _, totals = run_profile([], [], endpoints(2))
    assert totals == {"e0": 0.0, "e1": 0.0}


def test_filters_run_in_order_and_scorers_see_only_survivors() -> None:
    first, second = DropFilter("f1", {"e0"}), DropFilter("f2", {"e2"})
    scorer = FixedScorer("s", [0.1, 0.2, 0.3, 0.4])
    result, totals = run_profile([first, second], [(scorer, 1.0)], endpoints(4))
    assert scorer.seen == [["e1", "e3"]]
    assert list(totals) == ["e1", "e3"]
    assert result.targets[0].name == "e3"


def test_empty_filter_result_fails_the_profile_and_stops_early() -> None:
    everything = DropFilter("all", {"e0", "e1"})
    later = DropFilter("later", set())
    scorer = FixedScorer("s", [1.0, 1.0])
    result, _ = run_profile([everything, later], [(scorer, 1.0)], endpoints(2))
    assert result is None
    assert later.calls == 0
    assert scorer.seen == []


def test_scorer_returning_wrong_length_is_a_bug_not_a_silent_zero() -> None:
    class ShortScorer(FixedScorer):
        def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> Sequence[float]:
            return self.scores

    with pytest.raises(ValueError):
        run_profile([], [(ShortScorer("s", [1.0]), 1.0)], endpoints(2))


# --- the scheduler: handler loop, producers, hooks ----------------------------------------------

KEY = DataKey("TestData", default_producer="unused")


class CountingProducer(Plugin, DataProducer):
    type_name = "counting-producer"
    produces = KEY

    def __init__(self) -> None:
        super().__init__("producer", None, CTX)
        self.calls = 0

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        self.calls += 1
        request.attributes[self.name] = len(candidates)


class Hooks(Plugin, PreRequest, ResponseReceived, ResponseComplete):
    type_name = "hooks"

    def __init__(self) -> None:
        super().__init__("hooks", None, CTX)
        self.calls: list[str] = []

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        self.calls.append("pre_request")

    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None:
        self.calls.append("response_received")

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        self.calls.append(f"response_complete:{usage.completion_tokens if usage else None}")


class DecodeThenPrefill(Plugin, ProfileHandler):
    """A P/D-shaped handler: decode first; prefill only if decode found someone; decode primary;
    the prefill pick travels as a request header."""

    type_name = "decode-then-prefill"

    def __init__(self) -> None:
        super().__init__("pd", None, CTX)
        self.rounds: list[list[str]] = []

    def pick_profiles(
        self, request: InferenceRequest, profiles: Sequence[str], results: Mapping[str, ProfileResult | None]
    ) -> Sequence[str]:
        chosen: list[str] = []
        if "decode" not in results:
            chosen = ["decode"]
        elif results["decode"] is not None and "prefill" not in results:
            chosen = ["prefill"]
        self.rounds.append(chosen)
        return chosen

    def process_results(
        self, request: InferenceRequest, results: Mapping[str, ProfileResult | None]
    ) -> SchedulingResult:
        if results.get("decode") is None:
            raise SchedulingError("failed to find available decode workers")
        result = SchedulingResult(dict(results), "decode")
        prefill = results.get("prefill")
        if prefill is not None:
            result.headers["x-prefiller-host-port"] = prefill.targets[0].hostport
        return result


def profile(name: str, drop: set[str], scores: list[float], metrics: EppMetrics) -> SchedulerProfile:
    return SchedulerProfile(
        name,
        [DropFilter(f"{name}-filter", drop)],
        [(FixedScorer(name, scores), 1.0)],
        RecordingPicker(),
        metrics,
    )


def test_multi_profile_handler_loop_headers_and_load_targets() -> None:
    metrics = EppMetrics()
    handler = DecodeThenPrefill()
    decode = profile("decode", {"e0"}, [0.0, 0.2, 0.9], metrics)
    prefill = profile("prefill", {"e2"}, [0.0, 0.7, 0.0], metrics)
    scheduler = PluginScheduler(handler, [decode, prefill], [], metrics)
    result = scheduler.schedule(request(), endpoints(3))
    assert handler.rounds == [["decode"], ["prefill"], []]
    assert [e.name for e in result.targets] == ["e2"]
    assert result.headers == {"x-prefiller-host-port": "10.0.0.2:8000"}
    assert [e.name for e in result.first_targets()] == ["e2", "e1"]


def test_multi_profile_handler_fails_when_its_primary_profile_fails() -> None:
    metrics = EppMetrics()
    decode = profile("decode", {"e0", "e1"}, [0.0, 0.0], metrics)
    prefill = profile("prefill", set(), [0.0, 0.0], metrics)
    scheduler = PluginScheduler(DecodeThenPrefill(), [decode, prefill], [], metrics)
    with pytest.raises(SchedulingError, match="decode workers"):
        scheduler.schedule(request(), endpoints(2))


def test_handler_naming_a_profile_twice_or_an_unknown_one_is_an_error() -> None:
    class Looping(DecodeThenPrefill):
        def pick_profiles(
            self, request: InferenceRequest, profiles: Sequence[str], results: Mapping[str, Any]
        ) -> Sequence[str]:
            return ["decode"]

    class Unknown(DecodeThenPrefill):
        def pick_profiles(
            self, request: InferenceRequest, profiles: Sequence[str], results: Mapping[str, Any]
        ) -> Sequence[str]:
            return ["nope"]

    metrics = EppMetrics()
    for handler, problem in ((Looping(), "already run"), (Unknown(), "unknown")):
        scheduler = PluginScheduler(handler, [profile("decode", set(), [1.0], metrics)], [], metrics)
        with pytest.raises(SchedulingError, match=problem):
            scheduler.schedule(request(), endpoints(1))


def single_profile_scheduler(drop: set[str], plugins: list[Plugin], metrics: EppMetrics) -> PluginScheduler:
    handler = SingleProfileHandler("single-profile-handler", None, CTX)
    producers = [p for p in plugins if isinstance(p, DataProducer)]
    return PluginScheduler(handler, [profile("default", drop, [0.5, 1.0], metrics)], producers, metrics)


def test_failed_single_profile_raises_scheduling_error() -> None:
    scheduler = single_profile_scheduler({"e0", "e1"}, [], EppMetrics())
    with pytest.raises(SchedulingError, match="profile 'default' found no endpoint"):
        scheduler.schedule(request(), endpoints(2))


def test_no_candidates_is_a_scheduling_error() -> None:
    with pytest.raises(SchedulingError, match="no candidate"):
        single_profile_scheduler(set(), [], EppMetrics()).schedule(request(), [])


def test_producers_run_once_before_profiles_and_hooks_once_each() -> None:
    producer, hooks, metrics = CountingProducer(), Hooks(), EppMetrics()
    scheduler = single_profile_scheduler(set(), [producer, hooks], metrics)
    control = RequestControlHooks([producer, hooks], metrics)
    req = request()
    result = scheduler.schedule(req, endpoints(2))
    assert producer.calls == 1
    assert req.attributes["producer"] == 2
    assert result.primary_profile == "default" and result.targets[0].name == "e1"
    control.pre_request(req, result)
    control.response_received(req, result)
    control.response_complete(req, result, Usage(completion_tokens=7))
    assert hooks.calls == ["pre_request", "response_received", "response_complete:7"]


def test_plugin_durations_are_recorded_under_gie_labels() -> None:
    metrics = EppMetrics()
    plugins: list[Plugin] = [CountingProducer(), Hooks()]
    scheduler = single_profile_scheduler(set(), plugins, metrics)
    req = request()
    RequestControlHooks(plugins, metrics).pre_request(req, scheduler.schedule(req, endpoints(2)))

    def count(point: str, plugin_type: str, name: str) -> float | None:
        labels = {"extension_point": point, "plugin_type": plugin_type, "plugin_name": name}
        return metrics.registry.get_sample_value("inference_extension_plugin_duration_seconds_count", labels)

    assert count("ProfilePicker", "single-profile-handler", "single-profile-handler") == 2
    assert count("ProcessProfilesResults", "single-profile-handler", "single-profile-handler") == 1
    assert count("PrepareData", "counting-producer", "producer") == 1
    assert count("Filter", "drop-filter", "default-filter") == 1
    assert count("Scorer", "fixed-scorer", "default") == 1
    assert count("Picker", "recording-picker", "picker") == 1
    assert count("PreRequest", "hooks", "hooks") == 1


def test_registry_lists_canonical_names_and_resolves_aliases() -> None:
    types = plugin_types()
    assert types["by-label-selector"] is types["label-selector-filter"]
    assert types["kv-cache-scorer"] is types["kv-cache-utilization-scorer"]
    assert "by-label-selector" not in canonical_type_names()
    assert types["max-score-picker"] is MaxScorePicker


def test_registering_a_taken_type_name_fails() -> None:
    class Impostor(Plugin):
        type_name = "max-score-picker"

    with pytest.raises(RuntimeError, match="registered twice"):
        register(Impostor)
