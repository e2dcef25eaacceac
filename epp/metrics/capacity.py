"""llm-d router's flow-control capacity gauges: how much of each priority band's limits (and of
the global limits, when set) the queued requests hold, read from the flow controller when /metrics
is read. A limit that is not set (0, no limit) has no series: a ratio to a limit nothing enforces
would be made up."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.metrics.families import alpha


@dataclass(frozen=True)
class Occupancy:
    """Requests and bytes held against their limits (0: no limit)."""

    requests: int
    max_requests: int
    size_bytes: int
    max_bytes: int


# pool -> (the whole controller's occupancy, each band's by priority)
OccupancySource = Callable[[], tuple[Occupancy, Mapping[int, Occupancy]]]

_BAND = "Fraction of a priority band's {} capacity its queued requests occupy (0.0-1.0)."
_GLOBAL = "Fraction of the global {} capacity occupied across all priority bands (0.0-1.0); only when set."


def _gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"llm_d_epp_flow_control_{name}", alpha(text), labels=labels)


class CapacityGauges(Collector):
    def __init__(self) -> None:
        self.sources: dict[str, OccupancySource] = {}

    def collect(self) -> Iterator[Metric]:
        band = ["priority", "inference_pool"]
        band_requests = _gauge("capacity_utilization_requests", _BAND.format("request-count"), band)
        band_bytes = _gauge("capacity_utilization_bytes", _BAND.format("byte-size"), band)
        pool = ["inference_pool"]
        total_requests = _gauge("global_capacity_utilization_requests", _GLOBAL.format("request-count"), pool)
        total_bytes = _gauge("global_capacity_utilization_bytes", _GLOBAL.format("byte-size"), pool)
        for name, read in self.sources.items():
            total, bands = read()
            for priority, held in sorted(bands.items()):
                labels = [str(priority), name]
                if held.max_requests:
                    band_requests.add_metric(labels, held.requests / held.max_requests)
                if held.max_bytes:
                    band_bytes.add_metric(labels, held.size_bytes / held.max_bytes)
            if total.max_requests:
                total_requests.add_metric([name], total.requests / total.max_requests)
            if total.max_bytes:
                total_bytes.add_metric([name], total.size_bytes / total.max_bytes)
        yield from (band_requests, band_bytes, total_requests, total_bytes)
