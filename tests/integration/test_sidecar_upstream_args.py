"""The routing sidecar as llm-d runs its own: the `routing-sidecar` init container of llm-d-router's
decode Deployment (deploy/components/vllm-decode), alone and with the P/D environment's patch
(deploy/environments/dev/p-d), its args unchanged, started as `epp sidecar <args>` in front of a
real decode `epp sim`, and prefilling on a real prefill `epp sim`. (None of the chart renders in
tests/data/upstream/charts runs the sidecar: those charts deploy the EPP only.)

The files are tests/data/upstream/manifests/ (verbatim, provenance in SOURCES.yaml). What differs
from a cluster, and nothing else:
- the `${VARS}` are filled with the defaults of llm-d's scripts/kind-dev-env.sh;
- the patch's args replace the base's, as a strategic merge replaces a list of strings;
- `--port=8000` becomes `--port=0`, and `--host=127.0.0.1`, `--model-server-port` (the decode
  sim's free port: in the pod the engine is on llm-d's default 8200) and `--ready-file` are
  appended;
- llm-d's image runs the sidecar as its entrypoint; ours is `epp`, so the subcommand comes first
  (a pod gives `command: [epp, sidecar]`), or the pod names llm-d's binary, /app/pd-sidecar, which
  in our image is the `pd-sidecar` console script (run here as pip's generated script runs it).

The sidecar logs JSON lines, as llm-d's does, at the level of llm-d's --zap-log-level."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from epp.cli import parse_args
from epp.sidecar.cli import options_from_args
from epp.sidecar.connectors import Connector
from epp.stack.processes import ManagedProcess, epp_command, ready_file_probe, wait_until
from tests.integration.test_sidecar import chat, port_of, sim_stats, start_sim

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "tests" / "data" / "upstream" / "manifests"
BASE = MANIFESTS / "llmd-router-ebab687__deploy__components__vllm-decode__deployment.yaml"
PD_PATCH = MANIFESTS / "llmd-router-ebab687__deploy__environments__dev__p-d__patch-decode.yaml"
# scripts/kind-dev-env.sh at the same commit: VLLM_DATA_PARALLEL_SIZE:-1, CONNECTOR_TYPE:-nixlv2 (P/D).
KIND_DEV_ENV = {"VLLM_DATA_PARALLEL_SIZE": "1", "CONNECTOR_TYPE": "nixlv2"}


def routing_sidecar_args(path: Path) -> list[str]:
    deployment = yaml.safe_load(path.read_text())
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "routing-sidecar"
    ]
    return [re.sub(r"\$\{(\w+)\}", lambda m: KIND_DEV_ENV[m.group(1)], arg) for arg in container["args"]]


CASES = {"base": routing_sidecar_args(BASE), "p-d": routing_sidecar_args(PD_PATCH)}


def console_script(name: str) -> list[str]:
    """pyproject.toml's console script `name`, run as the script pip writes for it runs it."""
    module, _, function = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][
        name
    ].partition(":")
    code = f"import sys; from {module} import {function}; sys.argv[0] = {name!r}; sys.exit({function}())"
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_args_mean_what_they_mean_to_llm_d(case: str) -> None:
    options = options_from_args(parse_args(["sidecar", *CASES[case]]))
    assert (options.port, options.model_server_port, options.connector) == (8000, 8200, Connector.NIXLV2)
    assert not options.secure_proxy and not options.ssrf_protection, "llm-d's manifests turn both off"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Path, str, str]]:
    run_dir = tmp_path_factory.mktemp("sidecar-upstream")
    async with contextlib.AsyncExitStack() as stack:
        prefill = await start_sim(stack, run_dir, "prefill")
        decode = await start_sim(stack, run_dir, "decode")
        yield run_dir, prefill, decode


async def serve_pd(name: str, command: list[str], engines: tuple[Path, str, str]) -> list[dict[str, Any]]:
    """Start the sidecar by `command` plus the test's own args, prefill one request remotely
    through it, and return its log: JSON lines only."""
    run_dir, prefill, decode = engines
    ready = run_dir / f"{name}.ready.json"
    command = ["--port=0" if arg == "--port=8000" else arg for arg in command]
    extra = ["--host=127.0.0.1", f"--model-server-port={port_of(decode)}", f"--ready-file={ready}"]
    process = ManagedProcess(name, [*command, *extra], run_dir / f"{name}.log")
    await process.start()
    try:
        document: dict[str, Any] = await wait_until(ready_file_probe(ready), "the sidecar", 30, [process])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            before = await sim_stats(http, prefill)
            url = f"http://127.0.0.1:{document['port']}/v1/chat/completions"
            headers = {"x-prefiller-host-port": prefill}
            async with http.post(url, json=chat(4, name), headers=headers) as response:
                reply = await response.json()
                assert response.status == 200, reply
            after = await sim_stats(http, prefill)
        assert reply["usage"]["completion_tokens"] == 4
        assert after["prefill_only"] - before["prefill_only"] == 1, "prefilled remotely over nixlv2"
    finally:
        await process.stop()
    return [json.loads(line) for line in process.log_path.read_text().splitlines()]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_sidecar_serves_pd_with_llm_ds_own_args(case: str, engines: tuple[Path, str, str]) -> None:
    log = await serve_pd(case, epp_command("sidecar", *CASES[case]), engines)
    assert any(line["msg"].startswith("sidecar on http://127.0.0.1:") for line in log)
    assert {line["level"] for line in log} <= {"info", "warn"}, "info by default, as llm-d's"
    assert all(isinstance(line["ts"], float) for line in log), "epoch seconds, as llm-d's"


@pytest.mark.asyncio(loop_scope="module")
async def test_llm_ds_binary_path_runs_it_logging_at_the_given_level(engines: tuple[Path, str, str]) -> None:
    """`command: [/app/pd-sidecar]` with llm-d's args and its logging flags: verbosity 4 is
    llm-d's DEBUG, which shows the per-request lines; the encoder flag changes nothing, as there."""
    flags = ["--zap-log-level=4", "--zap-devel=true", "--zap-encoder=console"]
    log = await serve_pd("pd-sidecar", [*console_script("pd-sidecar"), *CASES["p-d"], *flags], engines)
    (prefill,) = [line for line in log if "prefill on 127.0.0.1:" in line["msg"]]
    assert prefill["level"] == "debug" and prefill["logger"] == "epp.sidecar.proxy"


def test_a_bad_logging_value_exits_2_naming_the_flag() -> None:
    ran = subprocess.run(
        [*console_script("pd-sidecar"), *CASES["p-d"], "--zap-log-level=verbose"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2
    assert "error: argument --zap-log-level: invalid log level 'verbose'" in ran.stderr
