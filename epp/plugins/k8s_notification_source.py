"""`k8s-notification-source` (llm-d): watches one kind of Kubernetes object (`group`, `version`,
`kind`; `group` empty for the core group) in the namespace the EPP discovers its pool in, and
hands every add, update and delete to its observers (`dataLayer.sources[].extractors`, or the
plugins that need that kind, e.g. `disaggregatedset-rollout-screener` for pods). The watch needs
Kubernetes discovery (`--pool-name` or `--endpoint-selector`); `epp serve` refuses to start it
without. An observer that raises is logged and the others still hear of the change."""

from __future__ import annotations

import logging
import re

from pydantic import model_validator

from epp.datalayer import KubernetesObjectObserver, KubernetesSource
from epp.datalayer.k8sobjects import GroupVersionKind, ObjectEvent
from epp.framework import Plugin, PluginContext, PluginParams, register

log = logging.getLogger(__name__)

_KIND = re.compile(r"^[A-Z][A-Za-z0-9]*$")


class K8sNotificationSourceParams(PluginParams):
    group: str = ""
    version: str = ""
    kind: str = ""

    @model_validator(mode="after")
    def _version_and_kind(self) -> K8sNotificationSourceParams:
        if not self.version or not self.kind:
            raise ValueError("version and kind are required for k8s-notification-source")
        if not _KIND.match(self.kind):
            raise ValueError(f"kind {self.kind!r} is not a Kubernetes kind (CamelCase, e.g. Pod)")
        return self


@register
class K8sNotificationSource(Plugin, KubernetesSource):
    type_name = "k8s-notification-source"
    Params = K8sNotificationSourceParams

    def __init__(self, name: str, params: K8sNotificationSourceParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self._kind = self.kind_of(params)
        self.extractors = []

    @classmethod
    def kind_of(cls, params: K8sNotificationSourceParams) -> GroupVersionKind:
        return GroupVersionKind(params.group, params.version, params.kind)

    @property
    def kind(self) -> GroupVersionKind:
        return self._kind

    def notify(self, event: ObjectEvent) -> None:
        for observer in self.extractors:
            assert isinstance(observer, KubernetesObjectObserver)
            try:
                observer.object_event(event)
            except Exception:  # one observer's bug must not starve the others
                log.exception(
                    "%s: observer %s failed on %s %s", self.name, observer.name, self._kind.kind, event.key
                )
