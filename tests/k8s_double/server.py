"""A wire-level double of the Kubernetes API server: just enough of its list and watch contract
for pods, InferencePools and InferenceObjectives, of get/create/replace for Leases, and of the
TokenReview and SubjectAccessReview APIs, that the real `kubernetes_asyncio` client, pointed at it
through a kubeconfig, cannot tell the difference on the paths the EPP uses.

What it implements, as the real server does:
- list: `labelSelector` (equality and existence terms), `fieldSelector` (metadata.name /
  metadata.namespace), `limit` + `continue` paging, `resourceVersion` of the snapshot;
  410 Expired for a continue token or resourceVersion older than the last `compact()`;
- watch (`?watch=true`): chunked newline-delimited JSON events from `resourceVersion` on
  (replayed from history, then live), ADDED/DELETED when a relabel moves an object in or out
  of the label selector, BOOKMARK events when `allowWatchBookmarks` is set, the stream ending
  after `timeoutSeconds`, and `{"type":"ERROR"}` with a 410 Status for a compacted version;
- get, create (POST; 409 AlreadyExists) and replace (PUT; 409 Conflict when the body's
  metadata.resourceVersion is not the stored one, unconditional without one) of single objects
  under /apis (the EPP's leader-election Lease);
- TokenReview (tokens registered with `add_user`) and SubjectAccessReview of non-resource URLs
  (allowed by `grant`), as the metrics endpoint's authentication delegates to them;
- bearer-token authentication (401 without it), RBAC from a Role's rules (403), and 404 for
  resources it is told not to serve;
- custom resources checked against GIE's CRD schemas (tests/data/upstream/crds/) when stored (apply raises).

And the failures a test needs to inject: `expire_watches()` (410 on open watches),
`drop_watches()` (connections cut mid-stream, no final chunk), `compact()`, `hold()` to
keep a list waiting, `hang_reads()` for single-object reads that never answer, and
`watch_delay` to deliver each watch event that many seconds late (a
lagging watch cache); `review_failures` to make the next reviews answer 500, and
`hold_reviews()` to keep them waiting (a stalled authentication webhook)."""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

from tests.k8s_double.schemas import has_schema, validate_custom_resource

Object = dict[str, Any]
TOKEN = "double-token"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PODS = Resource("", "v1", "pods", "Pod")
POOLS_V1 = Resource("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool")
POOLS_ALPHA = Resource("inference.networking.x-k8s.io", "v1alpha2", "inferencepools", "InferencePool")
OBJECTIVES = Resource(
    "inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives", "InferenceObjective"
)
MODEL_REWRITES = Resource(
    "inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite"
)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
ALL_RESOURCES = (PODS, POOLS_V1, POOLS_ALPHA, OBJECTIVES, MODEL_REWRITES, LEASES)
TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", "TokenReview")
ACCESS_REVIEWS = Resource("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview")
# The identity the double's own TOKEN stands for (the EPP's service account).
SERVICE_ACCOUNT = "system:serviceaccount:default:vllm-sim-epp"


@dataclass(frozen=True)
class User:
    """What a TokenReview says about a token."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ("system:authenticated",)


@dataclass
class Event:
    resource_version: int
    resource: Resource
    type: str
    old: Object | None
    new: Object


@dataclass
class RequestRecord:
    path: str
    query: dict[str, str]
    method: str = "GET"

    @property
    def watch(self) -> bool:
        return "watch" in self.query


class _Drop:
    """Queue sentinel: cut the connection without ending the chunked stream."""


@dataclass(eq=False)
class _Watcher:
    resource: Resource
    namespace: str
    queue: asyncio.Queue[Event | Object | _Drop] = field(default_factory=asyncio.Queue)
    bookmarks: bool = False


def _status(code: int, reason: str, message: str) -> Object:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _json(code: int, body: Object) -> web.Response:
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")


def _not_found(resource: Resource, name: str) -> web.Response:
    return _status_response(404, "NotFound", f'{resource.plural}.{resource.group} "{name}" not found')


def _status_response(code: int, reason: str, message: str) -> web.Response:
    return web.Response(
        status=code, body=orjson.dumps(_status(code, reason, message)), content_type="application/json"
    )


Predicate = Callable[[Object], bool]


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it (the client sends `True`)."""
    return request.query.get(name, "") in ("1", "t", "T", "true", "TRUE", "True")


def parse_label_selector(text: str) -> list[Predicate]:
    """Equality (`k=v`, `k==v`, `k!=v`) and existence (`k`, `!k`) terms, ANDed."""
    predicates: list[Predicate] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "(" in term or " " in term:
            raise ValueError(f"set-based selector terms are not supported by the double: {term!r}")
        if "!=" in term:
            key, value = term.split("!=", 1)
            predicates.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            predicates.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            predicates.append(lambda labels, k=term[1:]: k not in labels)
        else:
            predicates.append(lambda labels, k=term: k in labels)
    return predicates


def parse_field_selector(text: str) -> list[Predicate]:
    predicates: list[Predicate] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        path, sep, value = term.replace("==", "=").partition("=")
        if not sep or path not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f"field label not supported: {term!r}")
        field_name = path.split(".", 1)[1]
        predicates.append(lambda meta, f=field_name, v=value: meta.get(f) == v)
    return predicates


class _Query:
    def __init__(self, request: web.Request) -> None:
        query = request.query
        self.labels = parse_label_selector(query.get("labelSelector", ""))
        self.fields = parse_field_selector(query.get("fieldSelector", ""))
        self.resource_version = query.get("resourceVersion", "")

    def matches(self, obj: Object | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        return all(p(labels) for p in self.labels) and all(p(meta) for p in self.fields)


class ApiServerDouble:
    def __init__(self, served: Iterable[Resource] = ALL_RESOURCES, rbac: list[Object] | None = None) -> None:
        """`rbac`: the rules of a Role (and ClusterRole); when given, a request they do not allow
        gets 403."""
        self.served = set(served)
        self._rbac = rbac
        # TokenReview: token -> user; SubjectAccessReview: (user or group, verb, path) allowed.
        self.users: dict[str, User] = {TOKEN: User(SERVICE_ACCOUNT, "sa-uid")}
        self.non_resource_grants: set[tuple[str, str, str]] = set()
        self.review_failures = 0  # the next N reviews answer 500
        self.reviews_started = 0  # TokenReviews and SubjectAccessReviews received
        self._review_gate: asyncio.Event | None = None
        self.watch_delay = 0.0  # seconds each watch event is held before it is sent
        self.requests: list[RequestRecord] = []
        self._objects: dict[Resource, dict[tuple[str, str], Object]] = {r: {} for r in ALL_RESOURCES}
        self._history: list[Event] = []
        self._compacted = 0
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._watchers: set[_Watcher] = set()
        self._gates: dict[Resource, asyncio.Event] = {}
        self._hung_reads: dict[Resource, int] = {}
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._core)
        app.router.add_get("/apis/{group}/{version}/namespaces/{namespace}/{plural}", self._custom)
        app.router.add_post("/apis/{group}/{version}/namespaces/{namespace}/{plural}", self._create)
        app.router.add_get("/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}", self._read)
        app.router.add_put("/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}", self._replace)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._access_review)
        self._app = app

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> str:
        self._runner = web.AppRunner(self._app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._stopping.set()
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {"token": TOKEN}}],
            "contexts": [
                {"name": "double", "context": {"cluster": "double", "user": "double", "namespace": namespace}}
            ],
            "current-context": "double",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # --- state changes (what controllers and the kubelet would do) ------------------------------

    @property
    def resource_version(self) -> int:
        return self._last_rv

    def apply(self, resource: Resource, obj: Object) -> Object:
        """Create or replace the object (keyed by namespace/name); returns the stored copy."""
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        key = (meta["namespace"], meta["name"])
        old = self._objects[resource].get(key)
        meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        stored["apiVersion"] = resource.api_version
        stored["kind"] = resource.kind
        if has_schema(resource.api_version, resource.kind):
            validate_custom_resource(stored)  # as the real server's CRD validation would
        self._record(resource, "MODIFIED" if old else "ADDED", old, stored)
        self._objects[resource][key] = stored
        return copy.deepcopy(stored)

    def get(self, resource: Resource, name: str, namespace: str = "default") -> Object:
        return copy.deepcopy(self._objects[resource][(namespace, name)])

    def find(self, resource: Resource, name: str, namespace: str = "default") -> Object | None:
        obj = self._objects[resource].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def add_user(self, token: str, user: User) -> None:
        """A bearer token that TokenReviews authenticate as `user`."""
        self.users[token] = user

    def grant(self, subject: str, verb: str, path: str) -> None:
        """Let a user or group `verb` the non-resource URL `path` (a ClusterRole rule's
        nonResourceURLs), as SubjectAccessReviews will then answer."""
        self.non_resource_grants.add((subject, verb, path))

    def update(
        self, resource: Resource, name: str, change: Callable[[Object], None], namespace: str = "default"
    ) -> Object:
        obj = self.get(resource, name, namespace)
        change(obj)
        return self.apply(resource, obj)

    def delete(self, resource: Resource, name: str, namespace: str = "default") -> None:
        old = self._objects[resource].pop((namespace, name))
        gone = copy.deepcopy(old)
        self._record(resource, "DELETED", old, gone)

    def _record(self, resource: Resource, kind: str, old: Object | None, new: Object) -> None:
        self._last_rv = next(self._rv)
        new["metadata"]["resourceVersion"] = str(self._last_rv)
        event = Event(self._last_rv, resource, kind, copy.deepcopy(old), copy.deepcopy(new))
        self._history.append(event)
        for watcher in self._watchers:
            if watcher.resource == resource and watcher.namespace == new["metadata"]["namespace"]:
                watcher.queue.put_nowait(event)

    # --- failure injection -----------------------------------------------------------------------

    def compact(self) -> None:
        """Forget history up to now: older resourceVersions and continue tokens get 410."""
        self._compacted = self._last_rv
        self._history.clear()

    def expire_watches(self) -> None:
        """Send a 410 ERROR event on every open watch, as a server whose watch cache fell behind."""
        expired = _status(410, "Expired", "too old resource version")
        for watcher in self._watchers:
            watcher.queue.put_nowait({"type": "ERROR", "object": expired})

    def drop_watches(self) -> None:
        for watcher in self._watchers:
            watcher.queue.put_nowait(_Drop())

    def bookmark(self) -> None:
        for watcher in self._watchers:
            if watcher.bookmarks:
                watcher.queue.put_nowait(self._bookmark_event(watcher.resource))

    def hold(self, resource: Resource) -> asyncio.Event:
        """Hold list responses for `resource` until the returned event is set."""
        gate = self._gates[resource] = asyncio.Event()
        return gate

    def hang_reads(self, resource: Resource, count: int = 1) -> None:
        """The next `count` gets of one `resource` object never answer (until the double stops)."""
        self._hung_reads[resource] = count

    def hold_reviews(self) -> asyncio.Event:
        """Keep token and access reviews waiting until the returned event is set."""
        gate = self._review_gate = asyncio.Event()
        return gate

    async def _review_admitted(self) -> bool:
        """Wait while reviews are held; False when this one should answer 500."""
        self.reviews_started += 1
        if self._review_gate is not None:
            await self._review_gate.wait()
        if self.review_failures > 0:
            self.review_failures -= 1
            return False
        return True

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    def _bookmark_event(self, resource: Resource) -> Object:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self._last_rv)},
            },
        }

    # --- HTTP ------------------------------------------------------------------------------------

    async def _core(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "", "v1", "pods")

    async def _custom(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self._serve(request, info["group"], info["version"], info["plural"])

    async def _serve(self, request: web.Request, group: str, version: str, plural: str) -> web.StreamResponse:
        verb = "watch" if _flag(request, "watch") else "list"
        resource = self._admit(request, group, version, plural, verb)
        if isinstance(resource, web.Response):
            return resource
        try:
            query = _Query(request)
        except ValueError as exc:
            return _status_response(400, "BadRequest", str(exc))
        namespace = request.match_info["namespace"]
        if _flag(request, "watch"):
            return await self._watch(request, resource, namespace, query)
        gate = self._gates.get(resource)
        if gate is not None:
            await gate.wait()
        return self._list(request, resource, namespace, query)

    def _admit(
        self, request: web.Request, group: str, version: str, plural: str, verb: str
    ) -> Resource | web.Response:
        """The resource a request names, or the error the API server would answer: 401 without
        the token, 404 for a resource not served, 403 for a verb RBAC does not allow."""
        self.requests.append(RequestRecord(request.path, dict(request.query), request.method))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status_response(401, "Unauthorized", "Unauthorized")
        served = [*self.served, TOKEN_REVIEWS, ACCESS_REVIEWS]
        resource = next(
            (r for r in served if (r.group, r.version, r.plural) == (group, version, plural)), None
        )
        if resource is None:
            return _status_response(404, "NotFound", "the server could not find the requested resource")
        if not self._allowed(resource, verb):
            return _status_response(
                403, "Forbidden", f"cannot {verb} {resource.plural} in {resource.group!r}"
            )
        return resource

    # --- single objects: get, create, replace (optimistic concurrency on resourceVersion) ---------

    async def _read(self, request: web.Request) -> web.Response:
        info = request.match_info
        resource = self._admit(request, info["group"], info["version"], info["plural"], "get")
        if isinstance(resource, web.Response):
            return resource
        if self._hung_reads.get(resource, 0) > 0:
            self._hung_reads[resource] -= 1
            await self._stopping.wait()
        obj = self.find(resource, info["name"], info["namespace"])
        if obj is None:
            return _not_found(resource, info["name"])
        return _json(200, obj)

    async def _create(self, request: web.Request) -> web.Response:
        info = request.match_info
        resource = self._admit(request, info["group"], info["version"], info["plural"], "create")
        if isinstance(resource, web.Response):
            return resource
        body = await request.json()
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return _status_response(422, "Invalid", "metadata.name: Required value")
        if meta.get("resourceVersion"):
            return _status_response(
                400, "BadRequest", "resourceVersion should not be set on objects to be created"
            )
        meta["namespace"] = info["namespace"]
        if self.find(resource, name, info["namespace"]) is not None:
            message = f'{resource.plural}.{resource.group} "{name}" already exists'
            return _status_response(409, "AlreadyExists", message)
        return _json(201, self.apply(resource, body))

    async def _replace(self, request: web.Request) -> web.Response:
        info = request.match_info
        resource = self._admit(request, info["group"], info["version"], info["plural"], "update")
        if isinstance(resource, web.Response):
            return resource
        body = await request.json()
        meta = body.setdefault("metadata", {})
        name, namespace = info["name"], info["namespace"]
        if meta.get("name") != name:
            return _status_response(400, "BadRequest", "the name of the object does not match the URL")
        current = self.find(resource, name, namespace)
        if current is None:
            return _not_found(resource, name)
        expected = meta.get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on {resource.plural}.{resource.group} "{name}": the object '
                "has been modified; please apply your changes to the latest version and try again"
            )
            return _status_response(409, "Conflict", message)
        meta["namespace"] = namespace
        return _json(200, self.apply(resource, body))

    # --- reviews (authentication.k8s.io, authorization.k8s.io) -----------------------------------

    async def _token_review(self, request: web.Request) -> web.Response:
        resource = self._admit(request, TOKEN_REVIEWS.group, "v1", TOKEN_REVIEWS.plural, "create")
        if isinstance(resource, web.Response):
            return resource
        if not await self._review_admitted():
            return _status_response(500, "InternalError", "the review webhook failed")
        review = await request.json()
        user = self.users.get(review.get("spec", {}).get("token", ""))
        status: Object = {"authenticated": user is not None}
        if user is not None:
            status["user"] = {"username": user.username, "uid": user.uid, "groups": list(user.groups)}
        else:
            status["error"] = "invalid bearer token"
        review["status"] = status
        return _json(201, review)

    async def _access_review(self, request: web.Request) -> web.Response:
        resource = self._admit(request, ACCESS_REVIEWS.group, "v1", ACCESS_REVIEWS.plural, "create")
        if isinstance(resource, web.Response):
            return resource
        if not await self._review_admitted():
            return _status_response(500, "InternalError", "the review webhook failed")
        review = await request.json()
        spec = review.get("spec", {})
        target = spec.get("nonResourceAttributes")
        if target is None:
            return _status_response(400, "BadRequest", "the double only reviews non-resource URLs")
        subjects = [spec.get("user", ""), *spec.get("groups", [])]
        allowed = any(
            (s, target.get("verb"), target.get("path")) in self.non_resource_grants for s in subjects
        )
        review["status"] = {"allowed": allowed, "reason": "granted" if allowed else "no rule allows it"}
        return _json(201, review)

    def _allowed(self, resource: Resource, verb: str) -> bool:
        if self._rbac is None:
            return True
        return any(
            resource.group in rule.get("apiGroups", [])
            and resource.plural in rule.get("resources", [])
            and verb in rule.get("verbs", [])
            for rule in self._rbac
        )

    def _list(self, request: web.Request, resource: Resource, namespace: str, query: _Query) -> web.Response:
        snapshot_rv = self._last_rv
        after = ""
        token = request.query.get("continue")
        if token:
            state = orjson.loads(base64.urlsafe_b64decode(token))
            snapshot_rv, after = state["rv"], state["after"]
            if snapshot_rv < self._compacted:
                return _status_response(410, "Expired", "the provided continue parameter is too old")
        elif query.resource_version not in ("", "0") and int(query.resource_version) < self._compacted:
            return _status_response(410, "Expired", f"too old resource version: {query.resource_version}")
        items = sorted(
            (obj for (ns, name), obj in self._objects[resource].items() if ns == namespace and name > after),
            key=lambda obj: obj["metadata"]["name"],
        )
        items = [obj for obj in items if query.matches(obj)]
        metadata: Object = {"resourceVersion": str(snapshot_rv)}
        limit = int(request.query.get("limit", "0") or 0)
        if 0 < limit < len(items):
            items = items[:limit]
            state = {"rv": snapshot_rv, "after": items[-1]["metadata"]["name"]}
            metadata["continue"] = base64.urlsafe_b64encode(orjson.dumps(state)).decode()
        body = {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": metadata,
            "items": [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")} for obj in items],
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _watch(
        self, request: web.Request, resource: Resource, namespace: str, query: _Query
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watcher = _Watcher(resource, namespace, bookmarks=_flag(request, "allowWatchBookmarks"))
        start = query.resource_version
        if start not in ("", "0") and int(start) < self._compacted:
            expired = _status(410, "Expired", f"too old resource version: {start} ({self._compacted})")
            await response.write(orjson.dumps({"type": "ERROR", "object": expired}) + b"\n")
            await response.write_eof()
            return response
        # Replay and subscribe with no await in between, so no event falls in a gap.
        if start in ("", "0"):
            backlog: list[Event] = [
                Event(int(o["metadata"]["resourceVersion"]), resource, "ADDED", None, o)
                for (ns, _), o in self._objects[resource].items()
                if ns == namespace
            ]
        else:
            backlog = [e for e in self._history if e.resource == resource and e.resource_version > int(start)]
        for event in backlog:
            if event.new["metadata"]["namespace"] == namespace:
                watcher.queue.put_nowait(event)
        self._watchers.add(watcher)
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    item = await watcher.queue.get()
                    if isinstance(item, _Drop):
                        if request.transport is not None:
                            request.transport.abort()
                        return response
                    line = item if isinstance(item, dict) else self._event_line(item, query)
                    if line is not None:
                        if self.watch_delay:
                            await asyncio.sleep(self.watch_delay)
                        await response.write(orjson.dumps(line) + b"\n")
                    if isinstance(item, dict) and item["type"] == "ERROR":
                        break
        except TimeoutError:
            if watcher.bookmarks:
                await response.write(orjson.dumps(self._bookmark_event(resource)) + b"\n")
        finally:
            self._watchers.discard(watcher)
        await response.write_eof()
        return response

    @staticmethod
    def _event_line(event: Event, query: _Query) -> Object | None:
        """The event as this watcher sees it: a change that moves the object into or out of the
        selector arrives as ADDED or DELETED, as from the real server."""
        was, now = query.matches(event.old), query.matches(event.new)
        if event.type == "DELETED":
            kind = "DELETED" if was else None
        elif was and now:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif was:
            kind = "DELETED"
        else:
            kind = None
        return None if kind is None else {"type": kind, "object": event.new}
