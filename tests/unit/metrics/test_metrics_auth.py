"""`--metrics-endpoint-auth`: the EPP's /metrics behind TokenReview + SubjectAccessReview, reviewed
by the API server double through the real kubernetes_asyncio client, answered as
controller-runtime's filter answers (401, 403, 500, 200) and cached as it caches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from epp import serve
from epp.cli import build_parser
from epp.discovery.k8s.client import api_client
from epp.metrics.auth import DENY_TTL, TOKEN_TTL, MetricsAuth, bearer_token
from epp.metrics.http import MetricsServer
from tests.k8s_double import ApiServerDouble, User
from tests.unit.discovery.conftest import until

PROMETHEUS = User("system:serviceaccount:monitoring:prometheus", "prom-uid", ("system:authenticated",))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api() -> AsyncIterator[ApiServerDouble]:
    double = ApiServerDouble()
    await double.start()
    double.add_user("prom-token", PROMETHEUS)
    yield double
    await double.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def metrics_url(api: ApiServerDouble, tmp_path: Path, clock: Clock) -> AsyncIterator[str]:
    registry = CollectorRegistry()
    Counter("epp_test_total", "a metric to serve", registry=registry).inc()
    client = await api_client(api.write_kubeconfig(tmp_path / "kubeconfig"))
    server = MetricsServer(registry, "127.0.0.1", 0)
    server.auth = MetricsAuth(client, clock=clock)
    await server.start()
    yield f"http://127.0.0.1:{server.port}/metrics"
    await server.stop()
    await client.close()


async def get(url: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url, headers=headers)


def reviews(api: ApiServerDouble, kind: str) -> int:
    return sum(1 for r in api.requests if r.path.endswith(kind))


async def test_no_token_or_a_bad_one_is_401(api: ApiServerDouble, metrics_url: str) -> None:
    assert (await get(metrics_url)).status_code == 401
    assert reviews(api, "tokenreviews") == 0  # nothing to review
    response = await get(metrics_url, "not-a-token")
    assert (response.status_code, response.text) == (401, "Unauthorized\n")
    assert reviews(api, "subjectaccessreviews") == 0


async def test_an_authenticated_user_without_the_grant_is_403(api: ApiServerDouble, metrics_url: str) -> None:
    response = await get(metrics_url, "prom-token")
    assert response.status_code == 403
    assert response.text == f"Authorization denied for user {PROMETHEUS.username}\n"


async def test_a_granted_user_reads_the_metrics(api: ApiServerDouble, metrics_url: str) -> None:
    api.grant(PROMETHEUS.username, "get", "/metrics")
    response = await get(metrics_url, "prom-token")
    assert response.status_code == 200
    assert "epp_test_total 1.0" in response.text
    # What the EPP asked: the token, then the user's access to the non-resource URL.
    token_reviews = [r for r in api.requests if r.path.endswith("tokenreviews")]
    assert [r.method for r in token_reviews] == ["POST"]


async def test_a_grant_to_one_of_the_users_groups_is_enough(api: ApiServerDouble, metrics_url: str) -> None:
    api.grant("system:authenticated", "get", "/metrics")
    assert (await get(metrics_url, "prom-token")).status_code == 200


async def test_results_are_cached_briefly(api: ApiServerDouble, metrics_url: str, clock: Clock) -> None:
    assert (await get(metrics_url, "prom-token")).status_code == 403
    api.grant(PROMETHEUS.username, "get", "/metrics")
    assert (await get(metrics_url, "prom-token")).status_code == 403  # the denial is cached
    assert (reviews(api, "tokenreviews"), reviews(api, "subjectaccessreviews")) == (1, 1)

    clock.now += DENY_TTL + 1
    assert (await get(metrics_url, "prom-token")).status_code == 200
    assert (reviews(api, "tokenreviews"), reviews(api, "subjectaccessreviews")) == (1, 2)
    for _ in range(3):
        assert (await get(metrics_url, "prom-token")).status_code == 200
    assert (reviews(api, "tokenreviews"), reviews(api, "subjectaccessreviews")) == (1, 2)

    clock.now += TOKEN_TTL + 1  # the token is reviewed again; the allow decision still cached
    del api.users["prom-token"]  # e.g. the service account was deleted
    assert (await get(metrics_url, "prom-token")).status_code == 401


async def test_a_failed_review_is_500_and_not_cached(
    api: ApiServerDouble, metrics_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    api.grant(PROMETHEUS.username, "get", "/metrics")
    api.review_failures = 1
    with caplog.at_level(logging.ERROR, logger="epp.metrics.auth"):
        response = await get(metrics_url, "prom-token")
    assert response.status_code == 500
    assert "Authentication failed" in response.text and "TokenReview" in caplog.text
    assert (await get(metrics_url, "prom-token")).status_code == 200


@pytest.fixture
async def guarded(api: ApiServerDouble, tmp_path: Path) -> AsyncIterator[tuple[MetricsAuth, str]]:
    """/metrics behind reviews that time out after 0.5 s, granted to Prometheus."""
    api.grant(PROMETHEUS.username, "get", "/metrics")
    client = await api_client(api.write_kubeconfig(tmp_path / "kubeconfig"))
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
    server.auth = MetricsAuth(client, review_timeout=0.5)
    await server.start()
    yield server.auth, f"http://127.0.0.1:{server.port}/metrics"
    await server.stop()
    await client.close()


async def test_a_stalled_review_is_500_after_the_review_timeout(
    api: ApiServerDouble, guarded: tuple[MetricsAuth, str]
) -> None:
    """An API server (or its authentication webhook) that never answers fails the scrape after
    the review timeout, as controller-runtime's TokenAccessReviewTimeout does, instead of holding it
    (and a connection of the client leader election shares) open for as long as it stalls."""
    _, url = guarded
    gate = api.hold_reviews()
    started = time.monotonic()
    response = await get(url, "prom-token")
    assert (response.status_code, response.text) == (
        500,
        "Authentication failed: TokenReview: no answer from the API server within 0.5s\n",
    )
    assert time.monotonic() - started < 3
    gate.set()
    assert (await get(url, "prom-token")).status_code == 200  # the failure was not cached


async def test_concurrent_requests_share_one_review(
    api: ApiServerDouble, guarded: tuple[MetricsAuth, str]
) -> None:
    """Scrapes arriving while a token is being reviewed wait for that review instead of each
    sending their own: a burst costs the API server one TokenReview and one SubjectAccessReview."""
    auth, url = guarded
    gate = api.hold_reviews()
    burst = [asyncio.ensure_future(get(url, "prom-token")) for _ in range(20)]
    await until(lambda: auth.waiting == 20 and api.reviews_started > 0, "every request waiting")
    gate.set()
    assert [r.status_code for r in await asyncio.gather(*burst)] == [200] * 20
    assert (reviews(api, "tokenreviews"), reviews(api, "subjectaccessreviews")) == (1, 1)


async def test_without_rbac_for_reviews_the_endpoint_fails_closed(tmp_path: Path) -> None:
    api = ApiServerDouble(rbac=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])
    await api.start()
    api.add_user("prom-token", PROMETHEUS)
    api.grant(PROMETHEUS.username, "get", "/metrics")
    client = await api_client(api.write_kubeconfig(tmp_path / "kubeconfig"))
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
    server.auth = MetricsAuth(client)
    await server.start()
    try:
        assert (await get(f"http://127.0.0.1:{server.port}/metrics", "prom-token")).status_code == 500
    finally:
        await server.stop()
        await client.close()
        await api.stop()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def serve_args(*extra: str) -> list[str]:
    return ["serve", "--host=127.0.0.1", "--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", *extra]


@pytest.mark.parametrize(
    ("extra", "enabled"),
    [
        (["--pool-name=p"], True),  # GIE's default (true) in a cluster
        (["--pool-name=p", "--metrics-endpoint-auth=false"], False),
        (["--endpoint=127.0.0.1:8000"], False),  # standalone: no API server to ask
        (["--endpoint=127.0.0.1:8000", "--metrics-endpoint-auth"], True),
    ],
)
def test_the_default_follows_the_cluster(extra: list[str], enabled: bool) -> None:
    args = build_parser("serve").parse_args(serve_args(*extra))
    assert serve.options_from_args(args).metrics_auth is enabled


def test_asking_for_auth_without_kubernetes_is_a_clear_startup_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-kubeconfig"
    args = build_parser("serve").parse_args(
        serve_args("--endpoint=127.0.0.1:8000", "--metrics-endpoint-auth", f"--kubeconfig={missing}")
    )
    with caplog.at_level(logging.ERROR):
        assert serve.run(args) == 2
    assert "--metrics-endpoint-auth needs the Kubernetes API to review tokens" in caplog.text
    assert "--metrics-endpoint-auth=false" in caplog.text
