"""CPU cost of `models-data-source` polling one simulated vLLM server's /v1/models, against a
/metrics scrape of the same server in the same run (the baseline). The simulator runs as a child
process, so the figures are the EPP side only: HTTP client, JSON parse and the extractor. Run:

    .venv/bin/python bench/models_poll_cost.py --polls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from epp.datalayer.engines import BUILTIN_ENGINES
from epp.datalayer.fetch import KeepAliveGetter
from epp.datalayer.promtext import Extractor
from epp.datastore import Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.plugins.models_data_extractor import ModelsDataExtractor
from epp.plugins.models_data_source import ModelsDataSource
from epp.stack.processes import wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _cpu_per_call(call: Callable[[], Awaitable[object]], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        await call()
    return (time.process_time() - started) / count


async def main(polls: int, adapters: int) -> None:
    port = _free_port()
    loras = ",".join(f"adapter-{i}" for i in range(adapters))
    argv = [sys.executable, "-m", "epp.cli", "sim", "--port", str(port), "--profile", "tiny-test"]
    sim = await asyncio.create_subprocess_exec(
        *argv, "--lora-modules", loras, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    models = KeepAliveGetter("127.0.0.1", port, "/v1/models")
    metrics = KeepAliveGetter("127.0.0.1", port, "/metrics")
    try:

        async def listening() -> bool | None:
            try:
                await models.get(1.0)
            except OSError:
                return None
            return True

        await wait_until(listening, "the simulator", 30.0)
        source = ModelsDataSource("models", ModelsDataSource.Params(), PluginContext())
        source.use_extractors([ModelsDataExtractor("extractor", None, PluginContext())])
        endpoint = Endpoint(EndpointSpec("sim", "127.0.0.1", port))
        engine = BUILTIN_ENGINES["vllm"]
        extractor = Extractor(engine.names())

        async def scrape() -> None:
            _, body = await metrics.get(1.0)
            endpoint.metrics = engine.read(extractor.extract_bytes(body), time.monotonic())

        models_us = await _cpu_per_call(lambda: source.poll_once(endpoint, models), polls) * 1e6
        metrics_us = await _cpu_per_call(scrape, polls) * 1e6
        assert endpoint.served_models is not None and len(endpoint.served_models) == adapters + 1
        print(f"/v1/models poll: {models_us:.0f} us CPU; /metrics scrape: {metrics_us:.0f} us CPU")
        print(f"ratio: {models_us / metrics_us:.2f} ({polls} each, {adapters} adapters)")
    finally:
        models.close()
        metrics.close()
        sim.terminate()
        await sim.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--adapters", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.polls, args.adapters))
