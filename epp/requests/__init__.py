"""The inference request domain: parsed OpenAI requests, usage, and the errors bad input produces."""

from epp.requests.errors import ErrorCode, RequestError
from epp.requests.types import DEFAULT_FAIRNESS_ID, ApiKind, InferenceRequest, Usage

__all__ = ["DEFAULT_FAIRNESS_ID", "ApiKind", "ErrorCode", "InferenceRequest", "RequestError", "Usage"]
