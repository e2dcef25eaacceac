"""`encode-filter`: endpoints labelled to run multimodal encoders."""

from __future__ import annotations

from epp.framework import register
from epp.scheduling.roles import ENCODE_ROLES, RoleFilter


@register
class EncodeFilter(RoleFilter):
    type_name = "encode-filter"
    roles = ENCODE_ROLES
