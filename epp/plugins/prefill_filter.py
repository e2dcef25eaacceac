"""`prefill-filter`: endpoints labelled to prefill (unlabelled endpoints are not prefillers)."""

from __future__ import annotations

from epp.datastore.roles import PREFILL_ROLES
from epp.framework import register
from epp.scheduling.roles import RoleFilter


@register
class PrefillFilter(RoleFilter):
    type_name = "prefill-filter"
    roles = PREFILL_ROLES
