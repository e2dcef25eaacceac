"""`metrics-data-source`: endpoints' Prometheus pages as the metrics source (scheme and path)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from epp.datalayer import MetricsSource
from epp.framework import Plugin, PluginContext, PluginParams, register


class MetricsDataSourceParams(PluginParams):
    scheme: Literal["http", "https"] = "http"
    path: str = Field(default="/metrics", pattern=r"^/")
    insecure_skip_verify: bool = True


@register
class MetricsDataSource(Plugin, MetricsSource):
    type_name = "metrics-data-source"
    Params = MetricsDataSourceParams

    def __init__(self, name: str, params: MetricsDataSourceParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params

    def url_parts(self) -> tuple[str, str, bool]:
        return self.params.scheme, self.params.path, self.params.insecure_skip_verify
