"""`epp serve` with GIE's default profile loads only what it runs: not the simulator, not the
benchmarks' peer plugins, not pyzmq (which only KV-event plugins need), not OpenTelemetry (which
only `--tracing` needs), not the Kubernetes client (which only discovery from the API server,
leader election and /metrics authentication need: importing it cost about 0.5 s of CPU at every
start)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from epp.serve import EndpointPicker, ServeOptions
picker = EndpointPicker(ServeOptions())
prefixes = ("zmq.", "epp.sim", "epp.bench", "opentelemetry", "epp.tracing.", "kubernetes_asyncio")
loaded = sorted(m for m in sys.modules if m == "zmq" or m.startswith(prefixes))
print(",".join(loaded))
"""


def loaded_by_default_serve() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    return [m for m in out.stdout.strip().split(",") if m]


def test_default_serve_imports_none_of_the_simulator_pyzmq_peer_plugins_otel_or_k8s_client() -> None:
    assert loaded_by_default_serve() == []


def test_a_config_naming_a_peer_plugin_loads_the_peers_package() -> None:
    probe = (
        "import sys\n"
        "from epp.config.loader import load_config\n"
        "load_config('apiVersion: inference.networking.x-k8s.io/v1alpha1\\n"
        "kind: EndpointPickerConfig\\n"
        "plugins: [{type: round-robin-picker}]\\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: round-robin-picker}]}]\\n')\n"
        "print('epp.bench.peers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "True"
