"""`header-profile-handler` (llm-d): a request header picks the scheduling profile."""

from __future__ import annotations

import pytest

from epp.config.build import build_components
from epp.config.loader import load_config
from epp.framework import PluginContext
from epp.scheduling.types import SchedulingError
from tests.unit.plugin_helpers import endpoint, request

CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: header-profile-handler
  parameters: PARAMS
- {type: by-label, name: fast, parameters: {label: tier, validValues: [fast]}}
- {type: by-label, name: cheap, parameters: {label: tier, validValues: [cheap]}}
schedulingProfiles:
- {name: decode, plugins: [{pluginRef: cheap}]}
- {name: premium, plugins: [{pluginRef: fast}]}
"""
POOL = [endpoint("f", labels={"tier": "fast"}), endpoint("c", labels={"tier": "cheap"})]


def schedule(params: str, headers: dict[str, str]) -> str:
    components = build_components(load_config(CONFIG.replace("PARAMS", params)), PluginContext())
    result = components.scheduler.schedule(request(headers=headers), POOL)
    return f"{result.primary_profile}:{result.targets[0].name}"


def test_header_or_default_profile() -> None:
    assert schedule("{}", {"epp-profile": "premium"}) == "premium:f"
    assert schedule("{}", {"epp-profile": "  "}) == "decode:c"
    assert schedule("{}", {}) == "decode:c"
    assert schedule("{headerName: X-Tier, defaultProfile: premium}", {}) == "premium:f"
    assert schedule("{headerName: X-Tier}", {"x-tier": "premium"}) == "premium:f"


@pytest.mark.parametrize(
    ("params", "headers", "message"),
    [
        (
            "{}",
            {"epp-profile": "gold"},
            "no scheduling profile configured for 'epp-profile' header value 'gold'",
        ),
        ("{defaultProfile: none}", {}, "defaultProfile 'none' is not a configured scheduling profile"),
    ],
)
def test_unknown_profiles_fail_the_request(params: str, headers: dict[str, str], message: str) -> None:
    with pytest.raises(SchedulingError, match=message):
        schedule(params, headers)


def test_a_long_header_value_is_named_in_the_error_as_records_keep_it() -> None:
    """The client's whole header value came back in the 429 (60 KB of it through Envoy's header
    limit), as a long model name did in the 404: cut to 256 characters, as records keep names."""
    with pytest.raises(SchedulingError) as raised:
        schedule("{}", {"epp-profile": "g" * 60_000})
    assert str(raised.value) == (
        f"header profile handler: no scheduling profile configured for 'epp-profile' header value "
        f"'{'g' * 256}...'"
    )


def test_single_profile_runs_whatever_the_header_says() -> None:
    text = CONFIG.replace("PARAMS", "{}").replace("- {name: premium, plugins: [{pluginRef: fast}]}\n", "")
    components = build_components(load_config(text), PluginContext())
    result = components.scheduler.schedule(request(headers={"epp-profile": "other"}), POOL)
    assert result.primary_profile == "decode"
