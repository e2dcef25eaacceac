"""`epp serve` flags for Kubernetes discovery and TLS, parsed by the real CLI parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.cli import build_parser
from epp.discovery.kubernetes import PoolRef
from epp.serve import ServeOptions, options_from_args
from epp.tls import TlsOptions


def serve_options(*argv: str) -> ServeOptions:
    return options_from_args(build_parser("serve").parse_args(["serve", *argv]))


def test_gie_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAMESPACE", raising=False)
    options = serve_options("--pool-name", "llama")
    assert options.pool == PoolRef("llama", "default", "inference.networking.k8s.io")
    assert options.pool_name == "llama"
    assert (options.grpc_port, options.grpc_health_port, options.metrics_port) == (9002, 9003, 9090)
    assert options.tls_options == TlsOptions(secure_serving=True, cert_path=None)
    assert options.kubeconfig is None


def test_namespace_from_flag_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMESPACE", "from-env")
    assert serve_options("--pool-name", "p").pool == PoolRef("p", "from-env")
    assert serve_options("--pool-name", "p", "--pool-namespace", "flag").pool == PoolRef("p", "flag")


def test_all_kubernetes_and_tls_flags(tmp_path: Path) -> None:
    options = serve_options(
        "--pool-name=p",
        "--pool-namespace=ns",
        "--pool-group=inference.networking.x-k8s.io",
        f"--kubeconfig={tmp_path / 'kc'}",
        f"--cert-path={tmp_path}",
    )
    assert options.pool == PoolRef("p", "ns", "inference.networking.x-k8s.io")
    assert options.kubeconfig == tmp_path / "kc"
    assert options.tls_options == TlsOptions(secure_serving=True, cert_path=tmp_path)


@pytest.mark.parametrize(
    ("flag", "secure"),
    [
        ("--secure-serving=false", False),
        ("--secure-serving", True),
        ("--secure-serving=0", False),
        ("--secure-serving=True", True),
    ],
)
def test_secure_serving_takes_go_booleans(flag: str, secure: bool) -> None:
    assert serve_options("--endpoint=127.0.0.1:8000", flag).tls_options.secure_serving is secure


def test_standalone_endpoints_leave_the_pool_unset() -> None:
    assert serve_options("--endpoint=127.0.0.1:8000").pool is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "no endpoints"),
        (("--pool-name=p", "--endpoint=127.0.0.1:8000"), "exclude each other"),
        (("--pool-name=p", "--secure-serving=false", "--cert-path=/x"), "--cert-path needs --secure-serving"),
    ],
)
def test_conflicting_or_missing_flags(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        serve_options(*argv)
