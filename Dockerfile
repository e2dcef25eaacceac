# One image for the endpoint picker (`epp serve`), the P/D routing sidecar (`epp sidecar`) and the
# vLLM simulator (`epp sim`). Args that start with a flag run `epp serve` (GIE's and llm-d's Helm
# charts pass flags only: `args: [--pool-name, ..., --config-file, ...]`); a first arg naming a
# subcommand (`sim ...`, `sidecar ...`, `serve ...`) runs that one. /app/pd-sidecar runs `epp sidecar`
# with its args, for pods written for llm-d's sidecar image (`command: [/app/pd-sidecar]`).
FROM python:3.11-slim AS build
# gcc builds the C extensions (setup.py: the prefix index's tables, the precise index's block keys,
# the metrics page reader); only this stage has it. The install would fall back to the pure-Python
# versions without one, so the build checks that the extensions are there.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY epp ./epp
RUN pip install --no-cache-dir --prefix=/install . && \
    cd / && PYTHONPATH=/install/lib/python3.11/site-packages python -c \
        "import epp.scheduling.prefix._blockindex, epp.datalayer._blockkeys, epp.datalayer._promscan, epp.requests._jsondepth, epp.sim._wordtokens, epp.bench._eventheap"
# xds-protos overwrites OpenTelemetry's generated protos with an older copy (same module paths):
# put opentelemetry-proto's own back, or the OTLP exporters behind --tracing fail to import.
RUN version=$(PYTHONPATH=/install/lib/python3.11/site-packages python -c \
        "import importlib.metadata as m; print(m.version('opentelemetry-proto'))") && \
    pip install --no-cache-dir --prefix=/install --force-reinstall --no-deps "opentelemetry-proto==$version"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
# llm-d's sidecar image has its binary at /app/pd-sidecar (its ENTRYPOINT), and KServe's and some
# llm-d manifests name it in `command:`; here it is the `pd-sidecar` console script (epp.cli:pd_sidecar).
RUN test -x /usr/local/bin/pd-sidecar && mkdir /app && ln -s /usr/local/bin/pd-sidecar /app/pd-sidecar
# A fixed non-root UID (the manifests' runAsUser); nothing in the image needs to be written to,
# so the root filesystem can be mounted read-only.
USER 65532:65532
# ext_proc, gRPC health, EPP metrics; the pool's target port (sidecar or simulator).
EXPOSE 9002 9003 9090 8000
ENTRYPOINT ["epp"]
CMD ["--help"]
