"""What the built-in pickers share: `maxNumOfEndpoints` (default 1; zero or less means 1) and
the random source that breaks ties or samples."""

from __future__ import annotations

from epp.framework import Plugin, PluginContext, PluginParams
from epp.scheduling.framework import Picker


class PickerParams(PluginParams):
    max_num_of_endpoints: int = 1


class CountedPicker(Plugin, Picker):
    Params = PickerParams

    def __init__(self, name: str, params: PickerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.count = max(params.max_num_of_endpoints, 1)
        self.rng = context.rng
