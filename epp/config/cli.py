"""`epp config check FILE`: load an EndpointPickerConfig exactly as `epp serve` would, build its
plugins, and print what would run: every plugin with its effective parameters (defaults included,
`(default)` marking those the config did not set), the profiles, the profile handler, saturation
detector, data layer, parsers, data producers and feature gates, then every warning. Exit status 1
when the config is refused (the reasons go to stderr), 0 otherwise; `--strict` refuses configs
with warnings too, as `epp serve --strict-config` does."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from epp.config.build import build_components
from epp.config.loader import load_config_file
from epp.config.model import BandSpec, PickerConfig
from epp.config.stability import experimental_plugins
from epp.framework import PluginContext
from epp.params.strict import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate an EndpointPickerConfig and print what it resolves to",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", type=Path, help="EndpointPickerConfig YAML (GIE or llm-d)")
    check.add_argument("--strict", action="store_true", help="treat every warning as an error")


def run(args: argparse.Namespace) -> int:
    return check(args.file, args.strict, sys.stdout, sys.stderr)


def check(path: Path, strict: bool, out: TextIO, err: TextIO) -> int:
    try:
        config = load_config_file(path, strict=strict)
        build_components(config, PluginContext())
    except (ConfigError, ValueError) as exc:
        print(f"{path}: {exc}", file=err)
        return 1
    out.write(describe(config, str(path)))
    return 0


def describe(config: PickerConfig, source: str) -> str:
    """The resolved config, one section per part, for people to read."""
    lines = [f"config {source}: {config.api_version}, {len(config.plugins)} plugins", "plugins:"]
    for spec in config.plugins.values():
        added = " (added by default)" if spec.implicit else ""
        lines.append(f"  {spec.name}: {spec.type_name}{added}")
        lines.extend(f"    {line}" for line in _parameters(spec.params))
    lines.append("profiles:")
    for profile in config.profiles:
        scorers = ", ".join(f"{name} x{weight:g}" for name, weight in profile.scorers) or "none"
        lines.append(f"  {profile.name}:")
        lines.append(f"    filters: {', '.join(profile.filters) or 'none'}")
        lines.append(f"    scorers: {scorers}")
        lines.append(f"    picker: {profile.picker}")
    lines.append(f"profile handler: {config.profile_handler}")
    lines.append(f"saturation detector: {config.saturation_detector}")
    if config.metrics_source is None:
        lines.append("data layer: off (endpoint metrics are not scraped)")
    else:
        lines.append(f"data layer: source {config.metrics_source}, extractor {config.metrics_extractor}")
    if config.discovery is not None:
        lines.append(f"endpoints: from {config.discovery} (dataLayer.discovery), not Kubernetes or flags")
    for source, extractors in config.data_sources.items():
        lines.append(f"data layer: source {source}, extractors {', '.join(extractors) or 'none'}")
    lines.append(f"parsers: {', '.join(config.parsers)}")
    for (consumer, key), producer in config.producer_bindings.items():
        lines.append(f"data: {consumer} reads {key} from {producer}")
    if config.producer_order:
        lines.append(f"data producers run in order: {', '.join(config.producer_order)}")
    lines.append(f"feature gates: {', '.join(sorted(config.feature_gates)) or 'none'}")
    alpha = experimental_plugins(config)
    if alpha:
        lines.append(f"llm-d Alpha types (its router needs --allow-experimental-plugins): {', '.join(alpha)}")
    lines.extend(_flow_control(config))
    lines.append(f"warnings: {len(config.warnings) or 'none'}")
    lines.extend(f"  - {warning}" for warning in config.warnings)
    return "\n".join(lines) + "\n"


def _flow_control(config: PickerConfig) -> list[str]:
    spec = config.flow_control_spec
    if spec is None:
        if config.flow_control is None:
            return []
        return ["flow control: off (section validated; the flowControl feature gate is not set)"]
    ttl = f"{spec.default_request_ttl:g}s" if spec.default_request_ttl else "the caller's deadline"
    lines = [
        f"flow control: on (saturation detector {spec.saturation_detector}, usage limit "
        f"{spec.usage_limit_policy}, maxRequests {spec.max_requests or 'unlimited'}, maxBytes "
        f"{spec.max_bytes or 'unlimited'}, request TTL {ttl})",
        f"  default band: {_band(spec.default_band)}",
    ]
    lines.extend(f"  band {priority}: {_band(band)}" for priority, band in sorted(spec.bands.items()))
    return lines


def _band(band: BandSpec) -> str:
    return (
        f"fairness {band.fairness}, ordering {band.ordering}, maxRequests "
        f"{band.max_requests or 'unlimited'}, maxBytes {band.max_bytes or 'unlimited'}"
    )


def _parameters(params: BaseModel) -> list[str]:
    values = params.model_dump(by_alias=True, mode="json")
    fields = type(params).model_fields
    explicit = {fields[name].alias or name for name in params.model_fields_set}
    if not values:
        return ["(no parameters)"]
    return [
        f"{key}: {_value(value)}{'' if key in explicit else ' (default)'}" for key, value in values.items()
    ]


def _value(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))
