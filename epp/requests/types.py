"""The parsed request plugins see: no gRPC, no Envoy, just what the client asked for."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

AVERAGE_CHARS_PER_TOKEN = 4
# A request's flow (GIE's and llm-d's fairness id) when the gateway names none.
DEFAULT_FAIRNESS_ID = "default-flow"


class ApiKind(enum.StrEnum):
    COMPLETIONS = "completions"
    CHAT = "chat/completions"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    CONVERSATIONS = "conversations"
    OTHER = "other"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0


@dataclass(slots=True)
class InferenceRequest:
    """One inference request after parsing. `prompt` is the text used for prefix matching;
    `token_ids` is set when the client sent token ids instead of text."""

    request_id: str
    api: ApiKind
    path: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    target_model: str = ""
    prompt: bytes = b""
    token_ids: list[int] | None = None
    stream: bool = False
    max_tokens: int | None = None
    cache_salt: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    body_size: int = 0
    objective: str = ""
    priority: int = 0
    fairness_id: str = DEFAULT_FAIRNESS_ID
    attributes: dict[str, Any] = field(default_factory=dict)
    # A plugin changed `body`: the director forwards it re-serialised (when the parser allows).
    body_changed: bool = False

    def __post_init__(self) -> None:
        if not self.target_model:
            self.target_model = self.model

    @property
    def prompt_tokens(self) -> int:
        """Prompt length in tokens: exact for token-id prompts, else characters / 4 (GIE's estimate)."""
        if self.token_ids is not None:
            return len(self.token_ids)
        return max(len(self.prompt) // AVERAGE_CHARS_PER_TOKEN, 1) if self.prompt else 0
