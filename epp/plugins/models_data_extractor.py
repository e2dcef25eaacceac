"""`models-data-extractor` (llm-d): keeps what each endpoint's `/v1/models` names (the base model
and its LoRA adapters) on the endpoint. The director's served-model check reads it: a request for
a model the pool's endpoints do not list goes only to endpoints that do (404 when none does),
where llm-d leaves the attribute to plugins. No parameters."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datalayer import ModelsExtractor
from epp.datalayer.models import ServedModel
from epp.datastore import Endpoint
from epp.framework import Plugin, register


@register
class ModelsDataExtractor(Plugin, ModelsExtractor):
    type_name = "models-data-extractor"

    def extract_models(self, endpoint: Endpoint, models: Sequence[ServedModel]) -> None:
        endpoint.served_models = frozenset(model.id for model in models)
