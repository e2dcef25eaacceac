"""What `epp run` prints once the stack is up."""

from __future__ import annotations

from pathlib import Path

from epp.stack.cli import instructions
from epp.stack.stack import Stack, StackConfig


def started(tmp_path: Path, epp_ports: dict[str, object]) -> Stack:
    stack = Stack(StackConfig(run_dir=tmp_path))
    stack.gateway_port, stack.epp_ports = 8080, epp_ports
    return stack


def test_one_epp_prints_its_live_view(tmp_path: Path) -> None:
    text = instructions(started(tmp_path, {"grpc_port": 9002, "metrics_port": 9090}), "m")
    assert "Live view              http://127.0.0.1:9090/ui/   (why each request went where it did" in text


def test_each_worker_s_live_view_is_printed(tmp_path: Path) -> None:
    """With --workers each worker keeps the decisions it made on its own metrics port: only worker
    0's was printed, showing about half of the requests."""
    workers = [{"grpc_port": 9002, "metrics_port": 9090}, {"grpc_port": 9002, "metrics_port": 9177}]
    text = instructions(started(tmp_path, {"grpc_port": 9002, "metrics_port": 9090, "workers": workers}), "m")
    assert "each worker shows the requests it routed:" in text
    assert "http://127.0.0.1:9090/ui/   worker 0" in text
    assert "http://127.0.0.1:9177/ui/   worker 1" in text
