"""`epp serve` scheduling flags: config and objectives reach the director, bad config exits 2."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from epp import serve
from epp.cli import build_parser
from epp.flowcontrol.admission import LegacyAdmission
from epp.scheduling.framework import PluginScheduler

CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}, {type: random-picker}]
schedulingProfiles: [{name: only, plugins: [{pluginRef: queue-scorer}, {pluginRef: random-picker}]}]
dataLayer: {sources: []}
"""
OBJECTIVES = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1}
"""


def serve_args(*extra: str) -> argparse.Namespace:
    """`epp serve` with one endpoint and no drain window on stop (the router's default is 30 s)."""
    argv = ["serve", "--endpoint", "127.0.0.1:8000", "--drain-timeout=0s", *extra]
    return build_parser("serve").parse_args(argv)


def test_config_text_and_objectives_file_reach_the_director(tmp_path: Path) -> None:
    objectives = tmp_path / "objectives.yaml"
    objectives.write_text(OBJECTIVES)
    options = serve.options_from_args(
        serve_args("--config-text", CONFIG, "--objectives-file", str(objectives))
    )
    picker = serve.EndpointPicker(options)
    scheduler = picker.director.scheduler
    assert isinstance(scheduler, PluginScheduler) and list(scheduler.profiles) == ["only"]
    assert isinstance(picker.director.admission, LegacyAdmission)
    assert picker.director.objectives == {"batch": -1}
    assert picker.scraper is None  # the config's empty dataLayer turns scraping off


def test_config_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    assert [
        p.name for p in serve.options_from_args(serve_args("--config-file", str(path))).config.profiles
    ] == ["only"]


def test_default_is_gie_default_profile_with_scraping() -> None:
    picker = serve.EndpointPicker(serve.options_from_args(serve_args()))
    assert picker.scraper is not None
    assert list(picker.director.scheduler.profiles) == ["default"]  # type: ignore[attr-defined]


def test_config_file_and_text_exclude_each_other() -> None:
    with pytest.raises(SystemExit) as exited:
        serve_args("--config-file", "a.yaml", "--config-text", CONFIG)
    assert exited.value.code == 2


def test_invalid_config_refuses_to_start_with_exit_code_2(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        code = serve.run(serve_args("--config-text", CONFIG.replace("random-picker}]}]", "random-pickr}]}]")))
    assert code == 2
    assert (
        "invalid EndpointPickerConfig: schedulingProfiles[0].plugins[1].pluginRef: "
        "no plugin named 'random-pickr' (defined: queue-scorer, random-picker)" in caplog.text
    )


def test_help_describes_the_scheduling_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--config-file", "--config-text", "--objectives-file"):
        assert flag in text


def test_strict_config_refuses_a_config_with_warnings(caplog: pytest.LogCaptureFixture) -> None:
    lenient = CONFIG.replace("{type: queue-scorer}", "{type: queue-scorer, parameters: {queueDepth: 1}}")
    assert lenient != CONFIG
    config = serve.options_from_args(serve_args("--config-text", lenient)).config
    assert config.warnings[0].startswith("plugins[0].parameters: unknown field 'queueDepth' ignored")
    with caplog.at_level(logging.ERROR):
        code = serve.run(serve_args("--config-text", lenient, "--strict-config"))
    assert code == 2
    assert "plugins[0].parameters.queueDepth: unknown field (allowed: none)" in caplog.text


def test_the_overdue_intervals_default_to_four_and_reach_the_scraper() -> None:
    for args, turns in (((), 4), (("--metrics-overdue-intervals=0",), 0)):
        picker = serve.EndpointPicker(serve.options_from_args(serve_args(*args)))
        assert picker.scraper is not None and picker.scraper.overdue_turns == turns
    with pytest.raises(
        ValueError, match=r"--metrics-overdue-intervals must be 0 \(no limit\) or more, not -1"
    ):
        serve.options_from_args(serve_args("--metrics-overdue-intervals=-1"))


def test_a_body_limit_below_one_byte_is_refused_at_startup() -> None:
    """`--max-body-bytes 0` (or -5) started, then answered every request 413 "request body exceeds
    the limit of -5 bytes": a limit with no "off" value is refused before anything binds."""
    assert serve.options_from_args(serve_args("--max-body-bytes=1")).stream.max_body_bytes == 1
    for value in ("0", "-5"):
        with pytest.raises(ValueError, match=rf"^--max-body-bytes must be at least 1, not {value}$"):
            serve.options_from_args(serve_args(f"--max-body-bytes={value}"))


def test_the_json_containers_limit_is_0_or_more() -> None:
    assert serve.options_from_args(serve_args()).stream.max_json_containers == 100_000
    assert serve.options_from_args(serve_args("--max-json-containers=0")).stream.max_json_containers == 0
    with pytest.raises(ValueError, match=r"^--max-json-containers must be 0 \(no limit\) or more, not -1$"):
        serve.options_from_args(serve_args("--max-json-containers=-1"))


def test_a_served_header_envoy_would_refuse_is_refused_at_startup() -> None:
    """`--served-header 'bad header'` started, then Envoy refused the header mutation on every
    request: 503 "the endpoint picker is unreachable or failed" blaming the EPP."""
    for name in ("X-Served-By", "x-epp-destination"):
        assert serve.options_from_args(serve_args(f"--served-header={name}")).stream.served_header == name
    assert serve.options_from_args(serve_args("--served-header=")).stream.served_header == ""  # off
    for name in ("bad header", "x-a:b", "x-é", "x-a\r\nx-b"):
        with pytest.raises(ValueError, match=r"^--served-header .* is not an HTTP header name"):
            serve.options_from_args(serve_args(f"--served-header={name}"))


def test_a_served_header_envoy_would_drop_is_refused_at_startup() -> None:
    """Envoy's ext_proc, under its default mutation rules (the rendered bootstrap sets none),
    ignores a mutation of `host` or of a name starting `x-envoy`: `--served-header
    x-envoy-served-by` started and no response ever carried the header, without a word (measured
    through Envoy: 200 without the header)."""
    for name in ("x-envoy-served-by", "X-Envoy-Upstream", "x-envoyx", "Host"):
        with pytest.raises(ValueError, match=r"^--served-header .* is dropped by Envoy"):
            serve.options_from_args(serve_args(f"--served-header={name}"))
    for name in ("x-served-by-envoy", "hostname", "x-host"):
        assert serve.options_from_args(serve_args(f"--served-header={name}")).stream.served_header == name


def test_a_served_header_of_the_connection_or_framing_is_refused_at_startup() -> None:
    """Measured through the stack's Envoy: `--served-header te` sent `te: <endpoint>` and every
    HTTP/2 response failed (curl: "HTTP/2 stream 1 was not closed cleanly: PROTOCOL_ERROR");
    content-length, transfer-encoding, connection, upgrade and proxy-connection served 200
    without the header, keep-alive reached HTTP/1.1 clients only; all without a word."""
    names = ("te", "TE", "content-length", "Transfer-Encoding", "connection", "upgrade")
    for name in (*names, "keep-alive", "proxy-connection"):
        with pytest.raises(ValueError, match=r"^--served-header .* is a header of the connection or of the"):
            serve.options_from_args(serve_args(f"--served-header={name}"))
    for name in ("x-te", "tex", "x-connection", "x-upgrade", "x-content-length"):
        assert serve.options_from_args(serve_args(f"--served-header={name}")).stream.served_header == name


def test_the_queue_wait_bound_defaults_to_a_second_and_reaches_the_guard() -> None:
    assert serve.options_from_args(serve_args()).max_queue_wait == 1.0
    picker = serve.EndpointPicker(serve.options_from_args(serve_args("--max-queue-wait", "250ms")))
    assert picker.overload.max_wait == 0.25
    assert serve.options_from_args(serve_args("--max-queue-wait=0")).max_queue_wait == 0.0
    with pytest.raises(ValueError, match=r"invalid duration '-1s': use Go syntax"):
        serve.options_from_args(serve_args("--max-queue-wait=-1s"))


def test_the_standing_queue_controller_is_off_by_default_and_reaches_the_guard_when_set() -> None:
    assert serve.EndpointPicker(serve.options_from_args(serve_args())).overload.standing is None
    picker = serve.EndpointPicker(serve.options_from_args(serve_args("--queue-wait-target=50ms")))
    assert picker.overload.standing is not None
    assert (picker.overload.standing.target, picker.overload.standing.interval) == (0.05, 0.1)
    args = serve_args("--queue-wait-target=20ms", "--queue-wait-interval=1s")
    standing = serve.EndpointPicker(serve.options_from_args(args)).overload.standing
    assert standing is not None and (standing.target, standing.interval) == (0.02, 1.0)
    assert (
        serve.EndpointPicker(serve.options_from_args(serve_args("--queue-wait-target=0"))).overload.standing
        is None
    )
    with pytest.raises(
        ValueError, match=r"--queue-wait-interval \(50ms\) must be longer than --queue-wait-target \(50ms\)"
    ):
        serve.options_from_args(serve_args("--queue-wait-target=50ms", "--queue-wait-interval=50ms"))
    with pytest.raises(ValueError, match=r"invalid duration '-1ms': use Go syntax"):
        serve.options_from_args(serve_args("--queue-wait-target=-1ms"))
    with pytest.raises(ValueError, match=r"--queue-wait-interval must be a positive duration, not '0'"):
        serve.options_from_args(serve_args("--queue-wait-interval=0"))


def test_the_rate_limit_quota_is_off_by_default_and_needs_the_standing_queue_controller(
    tmp_path: Path,
) -> None:
    plain = serve.EndpointPicker(serve.options_from_args(serve_args("--queue-wait-target=50ms")))
    assert plain.quota is None and not plain.overload.by_priority
    objectives = tmp_path / "objectives.yaml"
    objectives.write_text(OBJECTIVES)
    args = serve_args("--rate-limit-quota", "--queue-wait-target=50ms", f"--objectives-file={objectives}")
    picker = serve.EndpointPicker(serve.options_from_args(args))
    assert picker.quota is not None and picker.quota.quota.rate is None  # no limit until it sheds
    assert picker.overload.by_priority  # the guard sheds sheddable requests first
    picker.quota.seen.seen("batch")  # counted under the objectives the EPP knows, from its director
    picker.quota.seen.seen("unknown")
    assert picker.quota.seen._counts == {"batch": 1, None: 1}
    with pytest.raises(ValueError, match=r"--rate-limit-quota needs --queue-wait-target \(e\.g\. 50ms\)"):
        serve.options_from_args(serve_args("--rate-limit-quota"))
    with pytest.raises(ValueError, match=r"--rate-limit-quota with --workers: the gateway's quota stream"):
        serve.options_from_args(serve_args("--rate-limit-quota", "--queue-wait-target=50ms", "--workers=2"))


@pytest.mark.parametrize(
    "flag",
    ["--drain-timeout=inf", "--max-queue-wait=nan", "--queue-wait-target=nan", "--shutdown-grace=1e999"],
)
def test_an_endless_or_undefined_duration_flag_is_refused_naming_it(flag: str) -> None:
    # Accepted, --drain-timeout=inf never exited on SIGTERM and --max-queue-wait=nan turned the
    # bound off without a word.
    value = flag.partition("=")[2]
    with pytest.raises(ValueError, match=rf"invalid duration '{value}': not a finite duration"):
        serve.options_from_args(serve_args(flag))


def test_a_start_that_fails_logs_its_error_not_a_drain(caplog: pytest.LogCaptureFixture) -> None:
    """`--endpoints-file` naming no file (or any start that fails) logged "stopping: NOT_SERVING;
    in-flight requests may finish for up to 120s" and "drained: ext_proc stopped" before its
    error, for a process that never served a request."""
    caplog.set_level(logging.INFO, logger="epp.serve")
    missing = "/nonexistent/endpoints.yaml"
    ports = ["--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", "--host=127.0.0.1"]
    args = build_parser("serve").parse_args(
        ["serve", f"--endpoints-file={missing}", "--drain-timeout=0s", "--secure-serving=false", *ports]
    )
    assert serve.run(args) == 2
    said = [r.getMessage() for r in caplog.records if r.name == "epp.serve"]
    assert not [m for m in said if "in-flight requests may finish" in m or m.startswith("drained")]
    assert said[-1] == f"{missing}: cannot read the endpoints file: No such file or directory"
