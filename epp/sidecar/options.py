"""Everything the sidecar is configured with, independent of how (CLI flags or tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from epp.discovery.k8s.model import PoolRef
from epp.sidecar.connectors import Connector
from epp.sidecar.prefill import RetryPolicy
from epp.sidecar.upstream import StageTls

DEFAULT_SGLANG_BOOTSTRAP_PORT = 8998


@dataclass
class SidecarOptions:
    host: str = "0.0.0.0"
    port: int = 8000
    model_server_host: str = "127.0.0.1"
    model_server_port: int = 8200
    connector: Connector = Connector.NIXLV2
    prefiller_sampling: bool = False
    # SSRF protection is off unless asked for, as in llm-d; when on, the allowed prefill targets
    # come from `pool` (through the Kubernetes API) or from `endpoints_file`.
    ssrf_protection: bool = False
    pool: PoolRef | None = None
    kubeconfig: Path | None = None
    pool_sync_timeout: float = 30.0
    endpoints_file: Path | None = None
    prefill: RetryPolicy = field(default_factory=RetryPolicy)
    prefiller_tls: StageTls = field(default_factory=StageTls)
    decoder_tls: StageTls = field(default_factory=StageTls)
    secure_proxy: bool = False
    cert_path: Path | None = None
    sglang_bootstrap_port: int = DEFAULT_SGLANG_BOOTSTRAP_PORT
    connect_timeout: float = 30.0
    health_timeout: float = 5.0
    max_body_bytes: int = 64 * 1024 * 1024
    access_log: bool = False
    shutdown_timeout: float = 60.0
    ready_file: Path | None = None
