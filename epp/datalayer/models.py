"""The OpenAI-compatible model list (`GET /v1/models`) a model server publishes: what it serves
(base model and LoRA adapters), parsed from its JSON answer."""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One `data[]` entry: `id` is the name requests use; an adapter names its base in `parent`."""

    id: str
    parent: str = ""
    owned_by: str = ""
    created: int = 0


def parse_models(body: bytes) -> tuple[ServedModel, ...]:
    """The entries of a `/v1/models` answer; ValueError names what is wrong with a malformed one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"model list is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ValueError("model list has no `data` array")
    models = []
    for index, entry in enumerate(document["data"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise ValueError(f"model list data[{index}] has no string `id`")
        created = entry.get("created")
        models.append(
            ServedModel(
                id=entry["id"],
                parent=entry.get("parent") or "",
                owned_by=entry.get("owned_by") or "",
                created=created if isinstance(created, int) else 0,
            )
        )
    return tuple(models)
