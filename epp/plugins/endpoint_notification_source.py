"""`endpoint-notification-source`: llm-d's `dataLayer` source of endpoint add/delete events, whose
extractors (e.g. `precise-prefix-cache-producer`, to open and close per-pod KV-event subscribers)
react to pool changes. Every endpoint observer here is subscribed to the datastore already, so the
source carries no behaviour of its own; the loader checks that its extractors observe endpoints."""

from __future__ import annotations

from epp.datalayer import NotificationSource
from epp.framework import Plugin, register


@register
class EndpointNotificationSource(Plugin, NotificationSource):
    type_name = "endpoint-notification-source"
