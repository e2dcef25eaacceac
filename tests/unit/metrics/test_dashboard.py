"""dashboards/epp.json: every panel's PromQL parses, and every metric it queries is one the EPP or
the simulator really exports (names collected from their live registries, not from a list)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from epp.datastore import Datastore, EndpointSpec
from epp.metrics.exporter import EppMetrics
from epp.sim.engine import Engine
from epp.sim.metrics import build_registry
from epp.sim.profiles import TINY_TEST

DASHBOARD = Path(__file__).parents[3] / "dashboards" / "epp.json"
# Grafana's variables, replaced by what they stand for before parsing.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$model": ".*", "$pool": ".*"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a scrape of `registry` can hold: its samples' names, plus the names a
    labelled family without children yet will have (derived from its type)."""
    names: set[str] = set()
    family: Metric
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def epp_names() -> set[str]:
    metrics = EppMetrics()
    datastore = Datastore()
    endpoint = datastore.upsert(EndpointSpec(name="e", address="10.0.0.1", port=8000))
    endpoint.metrics.update_time = 1e18  # fresh, so the pool gauges report it
    metrics.watch_pool(datastore, "pool")
    return exported_names(metrics.registry)


def sim_names() -> set[str]:
    return exported_names(build_registry(Engine(TINY_TEST, "m"), "m"))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def metric_names(node: Any) -> set[str]:
    """Metric names in a parsed PromQL expression (vector selectors, at any depth)."""
    names: set[str] = set()
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            names.add(node.name)
        return names
    for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None:
            names |= metric_names(child)
    for arg in getattr(node, "args", None) or ():
        names |= metric_names(arg)
    return names


def substituted(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_every_query_parses_and_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = epp_names() | sim_names()
    found = queries(dashboard)
    assert len(found) >= 25
    used: set[str] = set()
    for title, expr in found:
        names = metric_names(promql_parser.parse(substituted(expr)))
        assert names, f"{title}: {expr} queries no metric"
        unknown = names - known
        assert not unknown, f"panel {title!r} queries metrics nobody exports: {sorted(unknown)}"
        used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"])
            assert metric and metric[1] in known, variable["definition"]
    # The panels the issue asks for are there.
    for needed in (
        "inference_objective_request_total",
        "inference_objective_request_error_total",
        "inference_objective_request_duration_seconds_bucket",
        "inference_extension_scheduler_e2e_duration_seconds_bucket",
        "inference_extension_plugin_duration_seconds_bucket",
        "inference_pool_average_queue_size",
        "inference_pool_average_kv_cache_utilization",
        "vllm:num_requests_waiting",
        "llm_d_epp_pd_decision_total",
    ):
        assert needed in used, needed


def test_the_checker_catches_a_misspelt_metric() -> None:
    known = epp_names()
    names = metric_names(promql_parser.parse("sum(rate(inference_objective_request_totl[5m]))"))
    assert names - known == {"inference_objective_request_totl"}
    assert "inference_pool_average_queue_size" in known  # the pool collector is read too


def test_panels_are_laid_out_without_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
