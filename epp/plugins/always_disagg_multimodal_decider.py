"""`always-disagg-multimodal-decider`: prefill remotely exactly the chat requests that carry images,
video or audio. Their prefill (media encoding plus a long token run) is the expensive part, so it
goes to prefill pods whatever the prefix cache holds; text-only requests stay on the decode pod."""

from __future__ import annotations

from typing import Any

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.disagg import PrefillDecider

# OpenAI chat content-part types that carry media (llm-d's list; its docs also name audio_url).
MEDIA_PART_TYPES = frozenset({"image_url", "video_url", "input_audio", "audio_url"})


@register
class AlwaysDisaggMultimodalDecider(Plugin, PrefillDecider):
    type_name = "always-disagg-multimodal-decider"

    def disaggregate(self, request: InferenceRequest, decode: Endpoint | None) -> bool:
        messages = request.body.get("messages")
        return isinstance(messages, list) and any(_has_media(message) for message in messages)


def _has_media(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") in MEDIA_PART_TYPES for part in content
    )
