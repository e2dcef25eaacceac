"""Per-plugin latency recording into `inference_extension_plugin_duration_seconds`.

Looking up a labelled child costs more than most plugin calls, so each (extension point, plugin)
pair resolves its child once at build time and the hot path only calls the bound `observe`."""

from __future__ import annotations

from collections.abc import Callable

from epp.framework import Extension
from epp.metrics.exporter import EppMetrics

Observe = Callable[[float], None]

PROFILE_PICKER = "ProfilePicker"
PREPARE_DATA = "PrepareData"
FILTER = "Filter"
SCORER = "Scorer"
PICKER = "Picker"
PROCESS_RESULTS = "ProcessProfilesResults"
PRE_REQUEST = "PreRequest"
ADMIT_REQUEST = "AdmitRequest"
SCREENER = "Screener"
REQUEST_HEADER = "RequestHeader"
RESPONSE_RECEIVED = "ResponseReceived"
RESPONSE_STREAMING = "ResponseStreaming"
RESPONSE_COMPLETE = "ResponseComplete"


def observer(metrics: EppMetrics, extension_point: str, plugin: Extension) -> Observe:
    return metrics.plugin_duration.labels(extension_point, plugin.type_name, plugin.name).observe
