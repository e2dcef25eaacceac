"""The role filters: each keeps the endpoints whose `llm-d.ai/role` is one of its roles (the values
and sets are `epp.datastore.roles`)."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import Plugin
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class RoleFilter(Plugin, Filter):
    """Keeps endpoints whose role label is in `roles`; unlabelled ones only if `keeps_unlabelled`."""

    roles: frozenset[str]
    keeps_unlabelled: bool = False

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        roles, unlabelled = self.roles, self.keeps_unlabelled
        kept = []
        for endpoint in candidates:
            role = endpoint.role
            if (role in roles) if role is not None else unlabelled:
                kept.append(endpoint)
        return kept
