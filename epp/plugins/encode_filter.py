"""`encode-filter`: endpoints labelled to run multimodal encoders."""

from __future__ import annotations

from epp.datastore.roles import ENCODE_ROLES
from epp.framework import register
from epp.scheduling.roles import RoleFilter


@register
class EncodeFilter(RoleFilter):
    type_name = "encode-filter"
    roles = ENCODE_ROLES
