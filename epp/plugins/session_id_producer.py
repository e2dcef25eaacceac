"""`session-id-producer` (llm-d): publish the request's session identifier, taken from one header or
one cookie, as the request attribute named after this plugin, for the plugins that pin sessions
(`session-affinity-scorer` and `-filter` read it with a source `{attribute: SessionIDDataKey,
producer: <this plugin's name>}`). A request without it gets no attribute."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import model_validator

from epp.datalayer import DataProducer
from epp.datastore import Endpoint
from epp.framework import DataKey, Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest

SESSION_ID = DataKey("SessionIDDataKey", default_producer="session-id-producer")


class SessionIdProducerParams(PluginParams):
    header_name: str = ""
    cookie_name: str = ""

    @model_validator(mode="after")
    def _exactly_one(self) -> SessionIdProducerParams:
        if bool(self.header_name.strip()) == bool(self.cookie_name.strip()):
            raise ValueError("give exactly one of headerName or cookieName")
        return self


def cookie_value(header: str, name: str) -> str:
    """The value of the first `name=value` pair of a Cookie header, as written."""
    for pair in header.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key == name:
            return value
    return ""


@register
class SessionIdProducer(Plugin, DataProducer):
    type_name = "session-id-producer"
    Params = SessionIdProducerParams
    produces = SESSION_ID

    def __init__(self, name: str, params: SessionIdProducerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.header = params.header_name.strip().lower()
        self.cookie = params.cookie_name.strip()

    def session_id(self, request: InferenceRequest) -> str:
        if self.header:
            return request.headers.get(self.header, "").strip()
        return cookie_value(request.headers.get("cookie", ""), self.cookie).strip()

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        session = self.session_id(request)
        if session:
            request.attributes[self.name] = session
