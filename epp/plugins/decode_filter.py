"""`decode-filter`: endpoints that can decode; unlabelled endpoints count as decoders."""

from __future__ import annotations

from epp.datastore.roles import DECODE_ROLES
from epp.framework import register
from epp.scheduling.roles import RoleFilter


@register
class DecodeFilter(RoleFilter):
    type_name = "decode-filter"
    roles = DECODE_ROLES
    keeps_unlabelled = True
