"""`--metrics-endpoint-auth`: /metrics only for callers the cluster says may read it, as GIE's EPP
guards its metrics port with controller-runtime's `filters.WithAuthenticationAndAuthorization`.

A request must carry `Authorization: Bearer <token>`. The token is checked with a TokenReview
(authentication.k8s.io/v1), the user it names with a SubjectAccessReview (authorization.k8s.io/v1)
for the non-resource URL of the request (`/metrics`, verb `get`: the method lowercased). Answers
as controller-runtime's filter: 401 `Unauthorized` without a token or with one the review rejects,
403 `Authorization denied for user <name>` when not allowed, 500 when a review fails. Results are
cached as its delegating authenticator and authorizer cache them: tokens 1 min, allowed 5 min,
denied 30 s (failed reviews are not cached); a review unanswered within 10 s fails (500), as
controller-runtime's TokenAccessReviewTimeout, and requests waiting on the same review share it
rather than each sending their own (its authenticator's single-flight). The EPP's service account
needs `create` on tokenreviews and subjectaccessreviews (a ClusterRole; see docs/kubernetes.md);
Prometheus's needs `get` on the nonResourceURL /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from kubernetes_asyncio.client import (
    ApiClient,
    AuthenticationV1Api,
    AuthorizationV1Api,
    V1NonResourceAttributes,
    V1SubjectAccessReview,
    V1SubjectAccessReviewSpec,
    V1TokenReview,
    V1TokenReviewSpec,
)
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0
ALLOW_TTL = 300.0
DENY_TTL = 30.0
CACHE_LIMIT = 4096  # entries per cache; the oldest half is dropped past it
# controller-runtime's TokenAccessReviewTimeout: a stalled API server (or authentication webhook
# behind it) costs a scrape 10 s and a 500, not a request held open for as long as it stalls.
REVIEW_TIMEOUT = 10.0
_REVIEW_ERRORS = (ApiException, aiohttp.ClientError, OSError, TimeoutError)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class ReviewFailed(Exception):
    """The API server could not answer a review (not a rejection)."""


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


class _TtlCache:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            self._entries.pop(key, None)
            return False, None
        return True, entry[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        if len(self._entries) >= CACHE_LIMIT:
            for stale in list(self._entries)[: CACHE_LIMIT // 2]:
                del self._entries[stale]
        self._entries[key] = (self._clock() + ttl, value)


def bearer_token(header: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>`, as Kubernetes' bearer-token authenticator
    reads it (scheme case-insensitive, nothing after the token)."""
    if not header:
        return None
    parts = header.strip().split(" ")
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


class MetricsAuth:
    """TokenReview + SubjectAccessReview in front of the metrics handler, with their caches."""

    def __init__(
        self,
        api: ApiClient,
        clock: Callable[[], float] = time.monotonic,
        review_timeout: float = REVIEW_TIMEOUT,
    ) -> None:
        self._authentication = AuthenticationV1Api(api)
        self._authorization = AuthorizationV1Api(api)
        self._tokens = _TtlCache(clock)
        self._decisions = _TtlCache(clock)
        self._review_timeout = review_timeout
        # Reviews under way by cache key: the requests that need one share it.
        self._pending: dict[Hashable, asyncio.Task[Any]] = {}
        self.reviews = 0  # TokenReviews and SubjectAccessReviews sent (for tests and debugging)
        self.waiting = 0  # requests waiting for a review's answer (for tests and debugging)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            user = await self.authenticate(bearer_token(request.headers.get("Authorization")))
            if user is None:
                return web.Response(status=401, text="Unauthorized\n")
            if not await self.authorize(user, request.method.lower(), request.path):
                log.debug("metrics: authorization denied for user %s", user.username)
                return web.Response(status=403, text=f"Authorization denied for user {user.username}\n")
        except ReviewFailed as exc:
            log.error("metrics: %s", exc)
            return web.Response(status=500, text=f"{exc}\n")
        return await handler(request)

    async def authenticate(self, token: str | None) -> UserInfo | None:
        if token is None:
            return None
        key = hashlib.sha256(token.encode()).digest()  # no raw tokens kept in memory
        cached, user = self._tokens.get(key)
        if cached:
            return user
        return await self._shared(("token", key), lambda: self._review_token(key, token))

    async def _review_token(self, key: bytes, token: str) -> UserInfo | None:
        body = V1TokenReview(
            api_version="authentication.k8s.io/v1", kind="TokenReview", spec=V1TokenReviewSpec(token=token)
        )
        try:
            self.reviews += 1
            async with asyncio.timeout(self._review_timeout):
                review = await self._authentication.create_token_review(body)
        except _REVIEW_ERRORS as exc:
            reason = _reason(exc, self._review_timeout)
            raise ReviewFailed(f"Authentication failed: TokenReview: {reason}") from exc
        status = review.status
        user = None
        if status is not None and status.authenticated and status.user is not None:
            extra = status.user.extra or {}
            user = UserInfo(
                username=status.user.username or "",
                uid=status.user.uid or "",
                groups=tuple(status.user.groups or ()),
                extra=tuple(sorted((key, tuple(values)) for key, values in extra.items())),
            )
        self._tokens.put(key, user, TOKEN_TTL)
        return user

    async def authorize(self, user: UserInfo, verb: str, path: str) -> bool:
        key = (user, verb, path)
        cached, allowed = self._decisions.get(key)
        if cached:
            return bool(allowed)
        return bool(await self._shared(("access", key), lambda: self._review_access(key, user, verb, path)))

    async def _review_access(
        self, key: tuple[UserInfo, str, str], user: UserInfo, verb: str, path: str
    ) -> bool:
        body = V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SubjectAccessReview",
            spec=V1SubjectAccessReviewSpec(
                user=user.username,
                uid=user.uid or None,
                groups=list(user.groups),
                extra={key: list(values) for key, values in user.extra} or None,
                non_resource_attributes=V1NonResourceAttributes(path=path, verb=verb),
            ),
        )
        try:
            self.reviews += 1
            async with asyncio.timeout(self._review_timeout):
                review = await self._authorization.create_subject_access_review(body)
        except _REVIEW_ERRORS as exc:
            reason = _reason(exc, self._review_timeout)
            raise ReviewFailed(f"Authorization for user {user.username} failed: {reason}") from exc
        allowed = bool(review.status is not None and review.status.allowed)
        self._decisions.put(key, allowed, ALLOW_TTL if allowed else DENY_TTL)
        return allowed

    async def _shared(self, key: Hashable, review: Callable[[], Awaitable[T]]) -> T:
        """The answer of the review under way for `key`, or of a new one. The review runs as its
        own task, so a caller that gives up (a scrape timing out) does not cancel it for the others."""
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(review())
            self._pending[key] = task
            task.add_done_callback(lambda done: self._review_done(key, done))
        self.waiting += 1
        try:
            return await asyncio.shield(task)
        finally:
            self.waiting -= 1

    def _review_done(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller has gone


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    if isinstance(exc, TimeoutError):
        return f"no answer from the API server within {timeout:g}s"
    return str(exc) or type(exc).__name__
