"""Any one kind of Kubernetes object in a namespace, as a stream of add/update and delete events
(what llm-d's `k8s-notification-source` gets from its controller-runtime cache). A reflector keeps
the mirror; after each list and change the mirror is compared with what was last reported, so a
relist after a dropped watch reports exactly what changed meanwhile."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from epp.datalayer.k8sobjects import GroupVersionKind, ObjectEvent
from epp.discovery.k8s.model import Object
from epp.discovery.k8s.reflector import Lister, Reflector, WatchTiming
from epp.tasks import cancel_and_wait

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient


def plural(kind: str) -> str:
    """The resource name Kubernetes guesses for a kind (Go's UnsafeGuessKindToResource)."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def object_lister(api: ApiClient, kind: GroupVersionKind, namespace: str) -> Lister:
    """The namespaced list call for `kind`: the typed core/v1 one (pods, services, ...) or the
    generic one of an API group."""
    from kubernetes_asyncio.client import CoreV1Api, CustomObjectsApi  # here: see epp.discovery.k8s.client

    if kind.group == "":
        if kind.version != "v1":
            raise ValueError(f"{kind}: the core API group serves only version v1")
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", kind.kind).lower()
        call = getattr(CoreV1Api(api), f"list_namespaced_{snake}", None)
        if call is None:
            raise ValueError(f"{kind}: no such namespaced kind in the core API group")
        return functools.partial(call, namespace)
    return functools.partial(
        CustomObjectsApi(api).list_namespaced_custom_object,
        kind.group,
        kind.version,
        namespace,
        plural(kind.kind),
    )


class ObjectWatch:
    def __init__(
        self,
        api: ApiClient,
        kind: GroupVersionKind,
        namespace: str,
        on_event: Callable[[ObjectEvent], None],
        timing: WatchTiming | None = None,
    ) -> None:
        self._on_event = on_event
        self._reported: dict[str, Object] = {}
        self.reflector = Reflector(
            f"{kind.kind} objects in {namespace}",
            object_lister(api, kind, namespace),
            self._changed,
            timing or WatchTiming(),
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.reflector.run(), name=self.reflector.what)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _changed(self, reflector: Reflector) -> None:
        items, reported = reflector.items, self._reported
        for name in reported.keys() - items.keys():
            self._on_event(ObjectEvent(True, reported.pop(name)))
        for name, obj in items.items():
            previous = reported.get(name)
            if previous is None or _version(previous) != _version(obj):
                reported[name] = obj
                self._on_event(ObjectEvent(False, obj))


def _version(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))
