"""Every EPP container of every rendered chart in tests/data/upstream/charts (GIE's inferencepool
and standalone charts v1.0-v1.5, llm-d's router charts; SOURCES.yaml there records each commit)
parses with the `epp` CLI as the image runs it, and every GIE flag in it resolves to settings.
The chart's config files are other tests' business (tests/data/upstream/configs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from epp import gieflags, tls
from epp.cli import parse_args
from epp.discovery import kubernetes as k8s_discovery

CHARTS = Path(__file__).resolve().parents[1] / "data" / "upstream" / "charts"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def epp_args() -> list[tuple[str, list[str]]]:
    found = []
    for render in sorted(CHARTS.glob("*.yaml")):
        if render.name == "SOURCES.yaml":
            continue
        for doc in yaml.load_all(render.read_text(), Loader=LOADER):
            if doc and doc["kind"] == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    if container["name"] == "epp":
                        found.append((render.name, list(container["args"])))
    return found


ARGS = epp_args()
# llm-d's precise-prefix-cache guide values render `--ha-enable-leader-election=false=`, which Go's
# flag parsing refuses too (strconv.ParseBool("false=")): a bug in those values, not a flag we lack.
BROKEN = {"llm-d-router-gateway-main-ebab687-llmd-guide-precise-prefix-cache-routing.yaml"}


def test_there_are_renders_of_every_chart_kind() -> None:
    names = {name for name, _ in ARGS}
    assert len(ARGS) >= 40
    assert any(name.startswith("inferencepool-v1.3") for name in names)
    assert any(name.startswith("inferencepool-v1.5") for name in names)
    assert any(name.startswith("standalone-v1.5") for name in names)
    assert any(name.startswith("llm-d-router-") for name in names)


@pytest.mark.parametrize(
    ("render", "args"), [a for a in ARGS if a[0] not in BROKEN], ids=lambda v: v if isinstance(v, str) else ""
)
def test_chart_args_parse_as_serve_and_resolve(
    render: str, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "epp-6d4b8c9f7-x2x4q")
    parsed: Any = parse_args(args)
    assert parsed.command == "serve"
    standalone = False
    pool = k8s_discovery.pool_ref_from_args(parsed, standalone)
    selector = k8s_discovery.selector_from_args(parsed)
    assert (pool is None) != (selector is None)
    gieflags.refuse_unsupported(parsed)
    tls.options_from_args(parsed)
    overrides = gieflags.scrape_overrides(parsed)
    for spec in overrides.metric_specs.values():
        assert '"' not in spec  # the chart's quoting is gone
    if overrides.path is not None:
        assert overrides.path.startswith("/")


@pytest.mark.parametrize("render", sorted(BROKEN))
def test_the_broken_render_is_refused_by_the_flag_parser(
    render: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (args,) = [a for name, a in ARGS if name == render]
    with pytest.raises(SystemExit):
        parse_args(args)
    assert "--ha-enable-leader-election: expected true or false, not 'false='" in capsys.readouterr().err
