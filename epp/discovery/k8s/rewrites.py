"""InferenceModelRewrite objects, as the API server's JSON, turned into the EPP's model rewrites
for one pool. Apart from model.py because it needs the request-control layer, which the routing
sidecar (reading pools through model.py) must not import."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from epp.discovery.k8s.model import REWRITE_GROUP, REWRITE_VERSION, Object, PoolRef
from epp.requestcontrol.model_rewrite import ModelRewrite, for_pool, parse_model_rewrite

log = logging.getLogger(__name__)


def pool_model_rewrites(objects: Iterable[Object], pool: PoolRef) -> list[ModelRewrite]:
    """The InferenceModelRewrites whose poolRef names this pool. One the API server accepted but
    we cannot read is logged and skipped rather than stopping the others."""
    rewrites = []
    listed = {"apiVersion": f"{REWRITE_GROUP}/{REWRITE_VERSION}", "kind": "InferenceModelRewrite"}
    for obj in objects:
        try:
            rewrites.append(parse_model_rewrite({**listed, **obj}))  # list items may omit both
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            name = (obj.get("metadata") or {}).get("name")
            log.warning("ignoring InferenceModelRewrite %s: %s", name, exc)
    return for_pool(rewrites, pool.name, pool.group)
