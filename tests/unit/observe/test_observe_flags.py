"""`epp serve`'s observability flags reach the director, the live view and tracing."""

from __future__ import annotations

import pytest

from epp import serve, tracing
from epp.cli import build_parser


def picker(*extra: str) -> serve.EndpointPicker:
    args = build_parser("serve").parse_args(["serve", "--endpoint", "127.0.0.1:8000", *extra])
    return serve.EndpointPicker(serve.options_from_args(args))


def test_records_are_on_by_default_and_the_header_and_prompts_off() -> None:
    built = picker()
    assert built.director.recorder is built.recorder
    options = built.recorder.options
    assert (options.capacity, options.sample_rate, options.record_prompts, options.explain_header) == (
        1000,
        1.0,
        False,
        False,
    )
    assert built.options.observe.tracing is False


def test_flags_set_every_option_and_zero_turns_recording_off() -> None:
    built = picker(
        "--decision-records=10",
        "--decision-sample-rate=0.5",
        "--decision-record-prompts",
        "--decision-explain-header",
        "--tracing=true",
    )
    options = built.recorder.options
    assert (options.capacity, options.sample_rate, options.record_prompts, options.explain_header) == (
        10,
        0.5,
        True,
        True,
    )
    assert built.options.observe.tracing is True
    assert picker("--decision-records=0").director.recorder is None


@pytest.mark.parametrize(
    "flag", ["--decision-sample-rate=1.5", "--decision-sample-rate=-0.1", "--decision-records=-1"]
)
def test_out_of_range_values_are_refused(flag: str) -> None:
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--endpoint", "127.0.0.1:8000", flag])


async def test_tracing_is_set_up_at_start_and_shut_down_at_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    built = picker(
        "--tracing",
        "--host=127.0.0.1",
        "--grpc-port=0",
        "--grpc-health-port=0",
        "--metrics-port=0",
        "--secure-serving=false",
        "--shutdown-grace=0s",
        "--drain-timeout=0s",
    )
    try:
        await built.start()
        assert tracing.active is not None
    finally:
        await built.stop()
    assert tracing.active is None
