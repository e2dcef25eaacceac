"""The inference request domain: parsed OpenAI requests, usage, and the errors bad input produces."""

from epp.requests.errors import ErrorCode, RequestError
from epp.requests.types import ApiKind, InferenceRequest, Usage

__all__ = ["ApiKind", "ErrorCode", "InferenceRequest", "RequestError", "Usage"]
