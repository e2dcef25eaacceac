"""The EPP's metrics again under llm-d's names, for dashboards built on llm-d's router.

llm-d's router registers every GIE metric twice, once under GIE's name and once under its own
`llm_d_epp_*` name; its scheduler-era releases used `llm_d_inference_scheduler_*` for the P/D
decision counters. Doing the same here would double the series and the work on every request, so
the aliases are made when /metrics is read, from the samples already collected: nothing on the
request path, and only when the operator asks for them (`--metrics-aliases`). llm-d's per-request
families are not among them: they carry the request's flow, which GIE's samples do not
(`epp.metrics.flow_requests` records them)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Alias:
    """Another name for a metric family; `labels` renames labels, `keep` (when set) keeps only
    these labels and sums the samples that then coincide."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    keep: tuple[str, ...] | None = None


def _family(name: str) -> str:
    """prometheus_client names a counter's family without its `_total` suffix."""
    return name.removesuffix("_total")


def _table(pairs: Mapping[str, Alias]) -> dict[str, Alias]:
    return {_family(source): Alias(_family(a.name), a.labels, a.keep) for source, a in pairs.items()}


# llm-d router (llm_d_epp subsystem), as of llm-d-router ebab687.
LLM_D = _table(
    {
        # GIE's per-request families are not renamed: llm-d's carry fairness_id and priority,
        # which GIE's samples lack; they are recorded per request (epp.metrics.flow_requests).
        "inference_pool_average_kv_cache_utilization": Alias("llm_d_epp_average_kv_cache_utilization"),
        "inference_pool_average_queue_size": Alias("llm_d_epp_average_queue_size"),
        "inference_pool_average_running_requests": Alias("llm_d_epp_average_running_requests"),
        "inference_pool_ready_pods": Alias("llm_d_epp_ready_endpoints"),
        "inference_pool_per_pod_queue_size": Alias(
            "llm_d_epp_per_endpoint_queue_size", labels={"model_server_pod": "model_server_endpoint"}
        ),
        "inference_extension_scheduler_e2e_duration_seconds": Alias(
            "llm_d_epp_scheduler_e2e_duration_seconds"
        ),
        "inference_extension_scheduler_attempts_total": Alias(
            "llm_d_epp_scheduler_attempts_total", labels={"pod_name": "endpoint_name"}
        ),
        "inference_extension_plugin_duration_seconds": Alias("llm_d_epp_plugin_duration_seconds"),
        # Nor the prefix indexer's: llm-d's are by plugin (epp.metrics.prefix_indexer).
        "inference_extension_model_rewrite_decisions_total": Alias("llm_d_epp_model_rewrite_decisions_total"),
        "inference_extension_info": Alias("llm_d_epp_info"),
        # Flow control (llm-d-router pkg/epp/metrics/llm_d_router_metrics.go): the same labels.
        # The pool saturation is not an alias: llm-d's carries a `stage` label (prefill, decode,
        # effective) GIE's has not; the saturation gauge makes it (epp.metrics.exporter).
        **{
            f"inference_extension_flow_control_{name}": Alias(f"llm_d_epp_flow_control_{name}")
            for name in (
                "request_queue_duration_seconds",
                "dispatch_cycle_duration_seconds",
                "request_enqueue_duration_seconds",
                "queue_size",
                "queue_bytes",
            )
        },
    }
)

# llm-d-inference-scheduler before the router (its SchedulerSubsystem): the P/D counters, by model
# and decision only, and the data layer's errors. llm-d-router ebab687 still exports each beside
# its llm_d_epp_* twin (the data layer's always, the decisions' with a disaggregation handler).
LLM_D_SCHEDULER = _table(
    {
        "llm_d_epp_datalayer_poll_errors_total": Alias(
            "llm_d_inference_scheduler_datalayer_poll_errors_total"
        ),
        "llm_d_epp_datalayer_extract_errors_total": Alias(
            "llm_d_inference_scheduler_datalayer_extract_errors_total"
        ),
        "llm_d_epp_pd_decision_total": Alias(
            "llm_d_inference_scheduler_pd_decision_total", keep=("model_name", "decision_type")
        ),
        "llm_d_epp_disagg_decision_total": Alias(
            "llm_d_inference_scheduler_disagg_decision_total", keep=("model_name", "decision_type")
        ),
    }
)

NAME_SETS = {"llm-d": LLM_D, "llm-d-scheduler": LLM_D_SCHEDULER}


class AliasCollector(Collector):
    """Re-exposes `registry`'s families under their aliases. It is registered in that same
    registry, so while it collects it yields nothing to itself."""

    def __init__(self, registry: CollectorRegistry, aliases: Mapping[str, Alias]) -> None:
        self._registry = registry
        self._aliases = aliases
        self._collecting = False

    @property
    def registry(self) -> CollectorRegistry:
        """The registry whose families it aliases."""
        return self._registry

    def collect(self) -> Iterator[Metric]:
        if self._collecting:
            return
        self._collecting = True
        try:
            families = list(self._registry.collect())
        finally:
            self._collecting = False
        yield from self.renamed(families)

    def renamed(self, families: Iterable[Metric]) -> Iterator[Metric]:
        """The aliases of `families` (the registry's, already collected). Pure data: /metrics
        makes them in a thread from the families it collected (epp.metrics.http.exposition)."""
        for family in families:
            alias = self._aliases.get(family.name)
            if alias is not None:
                yield _renamed(family, alias)


def _renamed(family: Metric, alias: Alias) -> Metric:
    copy = Metric(alias.name, family.documentation, family.type, family.unit)
    summed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in family.samples:
        name = alias.name + sample.name[len(family.name) :]
        labels = {alias.labels.get(k, k): v for k, v in sample.labels.items()}
        if alias.keep is None:
            copy.samples.append(Sample(name, labels, sample.value, sample.timestamp, sample.exemplar))
            continue
        if name.endswith("_created"):
            continue  # a creation time does not sum
        key = (name, tuple((k, v) for k, v in labels.items() if k in alias.keep))
        summed[key] = summed.get(key, 0.0) + sample.value
    copy.samples.extend(Sample(name, dict(labels), value) for (name, labels), value in summed.items())
    return copy
