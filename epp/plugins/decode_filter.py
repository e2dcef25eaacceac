"""`decode-filter`: endpoints that can decode; unlabelled endpoints count as decoders."""

from __future__ import annotations

from epp.framework import register
from epp.scheduling.roles import DECODE_ROLES, RoleFilter


@register
class DecodeFilter(RoleFilter):
    type_name = "decode-filter"
    roles = DECODE_ROLES
    keeps_unlabelled = True
