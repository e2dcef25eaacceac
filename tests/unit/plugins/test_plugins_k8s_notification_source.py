"""`k8s-notification-source`: its parameters, how the loader wires observers to it (configured
source of the same kind first, else a default one), and that one failing observer does not stop
the others. Its watch runs against the API server double in tests/unit/discovery."""

from __future__ import annotations

import logging

import pytest

from epp.config.build import build_components
from epp.config.loader import load_config
from epp.datalayer import KubernetesObjectObserver
from epp.datalayer.k8sobjects import POD, GroupVersionKind, ObjectEvent
from epp.framework import Plugin, PluginContext
from epp.params.strict import ConfigError
from epp.plugins.k8s_notification_source import K8sNotificationSource
from tests.k8s_double.objects import pod
from tests.unit.plugin_helpers import plugin

SCREENER = """
- type: disaggregatedset-rollout-screener
  name: rollout
  parameters:
    scope: {labelSelector: "app=vllm"}
    revisionGating: {mode: sum, requireRoles: {values: [prefill, decode]}}
- type: max-score-picker
"""


def config(plugins: str, data_layer: str = "") -> str:
    return f"apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:{plugins}{data_layer}"


def test_an_observer_uses_the_configured_source_of_its_kind() -> None:
    loaded = load_config(
        config(
            "\n- {type: k8s-notification-source, name: pods, parameters: {version: v1, kind: Pod}}"
            + SCREENER,
            "\ndataLayer: {sources: [{pluginRef: pods}]}",
        )
    )
    assert loaded.data_sources == {"pods": ("rollout",)}
    assert "rollout/pod" not in loaded.plugins
    assert loaded.metrics_source == "metrics-data-source"  # injected, as llm-d does
    components = build_components(loaded, PluginContext())
    source = components.plugins["pods"]
    assert isinstance(source, K8sNotificationSource)
    assert source.kind == POD and source.extractors == [components.plugins["rollout"]]


def test_an_observer_wired_to_a_source_of_another_kind_is_an_error() -> None:
    text = config(
        "\n- {type: k8s-notification-source, name: leases, parameters: "
        "{group: coordination.k8s.io, version: v1, kind: Lease}}" + SCREENER,
        "\ndataLayer: {sources: [{pluginRef: leases, extractors: [{pluginRef: rollout}]}]}",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert (
        "dataLayer.sources[0]: 'rollout' observes /v1, Kind=Pod, but 'leases' watches "
        "coordination.k8s.io/v1, Kind=Lease" in str(caught.value)
    )


def test_only_object_observers_may_be_its_extractors() -> None:
    text = config(
        "\n- {type: k8s-notification-source, name: pods, parameters: {version: v1, kind: Pod}}"
        "\n- type: max-score-picker",
        "\ndataLayer: {sources: [{pluginRef: pods, extractors: [{pluginRef: max-score-picker}]}]}",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert "plugin 'max-score-picker' is a max-score-picker, not a Kubernetes object observer" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{kind: Pod}", "version and kind are required for k8s-notification-source"),
        ("{version: v1}", "version and kind are required for k8s-notification-source"),
        ("{version: v1, kind: pods}", "kind 'pods' is not a Kubernetes kind (CamelCase, e.g. Pod)"),
    ],
)
def test_bad_parameters(parameters: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config(f"\n- {{type: k8s-notification-source, parameters: {parameters}}}"))
    assert message in str(caught.value)


class Recorder(Plugin, KubernetesObjectObserver):
    type_name = "recorder"
    watched_kind = POD

    def __init__(self, name: str, fail: bool = False) -> None:
        super().__init__(name, None, PluginContext())
        self.fail = fail
        self.events: list[ObjectEvent] = []

    def object_event(self, event: ObjectEvent) -> None:
        if self.fail:
            raise RuntimeError("boom")
        self.events.append(event)


def test_a_failing_observer_is_logged_and_the_others_still_hear(caplog: pytest.LogCaptureFixture) -> None:
    source = plugin(K8sNotificationSource, {"version": "v1", "kind": "Pod"})
    broken, working = Recorder("broken", fail=True), Recorder("working")
    source.use_extractors([broken, working])
    event = ObjectEvent(False, pod("p0"))
    with caplog.at_level(logging.ERROR):
        source.notify(event)
    assert working.events == [event]
    assert "observer broken failed on Pod ('default', 'p0')" in caplog.text
    assert source.kind_of(source.Params.model_validate({"group": "g", "version": "v1", "kind": "K"})) == (
        GroupVersionKind("g", "v1", "K")
    )
