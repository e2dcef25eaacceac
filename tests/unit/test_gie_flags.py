"""GIE's Helm chart passes flags this EPP must accept."""

from __future__ import annotations

import json
import logging

import pytest

from epp import gieflags
from epp.cli import build_parser

CHART_ARGS = [
    "--zap-encoder",
    "json",
    "-v",
    "4",
    "--tracing=false",
    "--enable-pprof",
    "--ha-enable-leader-election",
    "--metrics-endpoint-auth=false",
    "--enable-cert-reload",
]


def test_the_charts_flags_parse_and_configure_logging(caplog: pytest.LogCaptureFixture) -> None:
    args = build_parser("serve").parse_args(["serve", "--endpoint", "10.0.0.1:8000", *CHART_ARGS])
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    formatters = {h: h.formatter for h in root.handlers}
    try:
        with caplog.at_level(logging.WARNING):
            gieflags.apply(args)
            assert root.level == logging.DEBUG
        line = handler.format(logging.LogRecord("epp", logging.INFO, "", 0, "hello", None, None))
        assert json.loads(line)["msg"] == "hello"
        assert "--enable-pprof: pprof profiling is not implemented" in caplog.text
        assert "tracing" not in caplog.text
        assert "leader" not in caplog.text  # implemented now: no warning
        assert (args.ha_enable_leader_election, args.metrics_endpoint_auth, args.enable_cert_reload) == (
            True,
            False,
            True,
        )
    finally:
        root.removeHandler(handler)
        for known, formatter in formatters.items():
            known.setFormatter(formatter)
