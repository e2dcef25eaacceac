"""`epp config check FILE [--strict]`: what a config resolves to, exit 1 when it is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.cli import main

UPSTREAM = Path(__file__).parents[2] / "data" / "upstream" / "configs"
V04_PD = UPSTREAM / "llmd-sched-v0.4.0__docs__disagg_pd.md.yaml"


def test_check_prints_plugins_with_effective_parameters_profiles_and_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "check", str(V04_PD)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config {V04_PD}: inference.networking.x-k8s.io/v1alpha1, 12 plugins\nplugins:\n")
    assert "  prefix-cache-scorer: prefix-cache-scorer\n    autoTune: true (default)\n" in out
    assert "    blockSizeTokens: 1\n" in out  # hashBlockSize 5 characters -> blockSize 5 -> 1 token
    assert "    maxPrefixBlocksToMatch: 256\n" in out  # set in the config: no (default)
    assert "  always-disagg-pd-decider: always-disagg-pd-decider (added by default)\n" in out
    assert "  prefill:\n    filters: prefill-pods\n    scorers: prefix-cache-scorer x2\n" in out
    assert "profile handler: pd-profile-handler\n" in out
    assert "data: prefix-cache-scorer reads PrefixCacheMatchInfo from approx-prefix-cache-producer\n" in out
    assert "warnings: 6\n" in out
    assert "    primaryPort: 8000\n" in out
    assert (
        "  - plugins[4].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'\n"
        in out
    )


def test_check_strict_refuses_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--strict", str(V04_PD)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{V04_PD}: invalid EndpointPickerConfig:\n")
    assert (
        "hashBlockSize is deprecated: read as blockSize (an error with strict config checking)"
        in captured.err
    )


def test_check_refused_config_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: nope}]\n")
    assert main(["config", "check", str(broken)]) == 1
    assert "plugins[0].type: unknown plugin type 'nope'" in capsys.readouterr().err
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read config file" in capsys.readouterr().err


def test_check_of_the_default_like_config_without_warnings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer, weight: 2}]}]\n"
    )
    assert main(["config", "check", "--strict", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  queue-scorer: queue-scorer\n    (no parameters)\n" in out
    assert "    scorers: queue-scorer x2\n    picker: max-score-picker\n" in out
    assert out.endswith("warnings: none\n")


def test_check_shows_the_data_sources_and_the_extractors_wired_to_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rollout = UPSTREAM / (
        "llmd-router-ebab687__pkg__epp__framework__plugins__requestcontrol__screener__"
        "disaggregatedsetrollout__README.md.yaml"
    )
    assert main(["config", "check", str(rollout)]) == 0
    out = capsys.readouterr().out
    assert "  rollout-screener/pod: k8s-notification-source (added by default)\n" in out
    assert "data layer: source metrics-data-source, extractor core-metrics-extractor\n" in out
    assert "data layer: source rollout-screener/pod, extractors rollout-screener\n" in out


def test_check_describes_flow_control_on_and_off(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sample = Path(__file__).parents[3] / "epp" / "config" / "samples" / "flow-control.yaml"
    assert main(["config", "check", str(sample)]) == 0
    out = capsys.readouterr().out
    assert (
        "flow control: on (saturation detector concurrency-detector, usage limit static-usage-limit-policy, "
        "maxRequests 1000, maxBytes unlimited, request TTL 8s)\n"
        "  default band: fairness round-robin-fairness-policy, ordering fcfs-ordering-policy, "
        "maxRequests unlimited, maxBytes 1000000000\n"
    ) in out
    gate_off = tmp_path / "off.yaml"
    gate_off.write_text(sample.read_text().replace("featureGates: [flowControl]\n", ""))
    assert main(["config", "check", str(gate_off)]) == 0
    assert "flow control: off (section validated; the flowControl feature gate is not set)\n" in (
        capsys.readouterr().out
    )


def test_check_names_the_types_llm_ds_router_only_runs_with_allow_experimental_plugins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    coord = UPSTREAM / "llmd-04ca254__guides__coord-disaggregation__router__coord-disaggregation.values.yaml"
    assert main(["config", "check", str(coord)]) == 0
    out = capsys.readouterr().out
    assert (
        "llm-d Alpha types (its router needs --allow-experimental-plugins): "
        "header-profile-handler (header-profile-handler)\n"
    ) in out
    assert main(["config", "check", str(V04_PD)]) == 0
    assert "Alpha" not in capsys.readouterr().out
