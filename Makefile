# Every target installs what it needs first: a venv in .venv with the package in editable mode.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install chromium redis h2load run test lint typecheck unit e2e kind-e2e bench bench-overhead bench-overhead-flow-control bench-overload bench-quick soak asan-check clean

# xds-protos ships an older copy of OpenTelemetry's generated protos under the same module paths,
# and whichever package pip installs last wins; reinstalling opentelemetry-proto's own files makes
# the OTLP exporters (--tracing) import the protos they were built against.
OTEL_PROTO_VERSION = $(BIN)/python -c "import importlib.metadata as m; print(m.version('opentelemetry-proto'))"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77'
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --force-reinstall --no-deps "opentelemetry-proto==$$($(OTEL_PROTO_VERSION))"
	touch $(STAMP)

# The C extensions (the prefix index's tables, epp/scheduling/prefix/_blockindex.c; the precise
# index's block keys, epp/datalayer/_blockkeys.c; the metrics page reader,
# epp/datalayer/_promscan.c; the request body's depth check, epp/requests/_jsondepth.c; the
# simulator tokenizer's words path, epp/sim/_wordtokens.c; the virtual-time run's event queue,
# epp/bench/_eventheap.c; a profile's totals over many candidates, epp/scheduling/_scoresum.c), built in place: the editable install
# builds them once; this rebuilds them when their sources change.
EXTENSION := $(VENV)/.blockindex
$(EXTENSION): $(STAMP) setup.py epp/scheduling/prefix/_blockindex.c epp/datalayer/_blockkeys.c epp/datalayer/_promscan.c epp/requests/_jsondepth.c epp/sim/_wordtokens.c epp/bench/_eventheap.c epp/scheduling/_scoresum.c
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $(EXTENSION)

install: $(STAMP) $(EXTENSION) chromium redis h2load

## The C extensions under AddressSanitizer and UndefinedBehaviorSanitizer, built in a scratch copy of
## the project (the in-place build is left alone) and run through its tests there, every allocation
## visible to ASan (PYTHONMALLOC=malloc). Needs gcc's libasan and libubsan. -fno-wrapv undoes Python's
## -fwrapv (it comes first), so UBSan sees signed overflow: it found the page reader's wrapped search end.
ASAN_DIR := build/asan
ASAN_CFLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fno-wrapv
asan-check: $(STAMP)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR) && cp -r epp tests pyproject.toml setup.py README.md $(ASAN_DIR)/
	cd $(ASAN_DIR) && CFLAGS="$(ASAN_CFLAGS)" LDFLAGS="-fsanitize=address,undefined" \
		$(CURDIR)/$(BIN)/python setup.py --quiet build_ext --inplace --force
	cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		$(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/scheduling/test_scheduling_prefix_compiled*.py \
		tests/unit/datalayer/test_blockkeys.py \
		tests/unit/datalayer/test_promtext_compiled.py \
		tests/unit/datalayer/test_promtext_agreement.py \
		tests/unit/datalayer/test_promtext_seen.py \
		tests/unit/requests/test_jsondepth.py \
		tests/unit/sim/test_tokens_compiled.py \
		tests/unit/bench/test_bench_events.py \
		tests/unit/scheduling/test_scoresum.py

## Debian packages the tests drive, installed with apt-get when missing, as root (CI); otherwise
## the target says what to install. $(call debian,<command that shows it is there>,<package>,<why>)
debian = @if ! $(1) >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
		else \
			echo "note: $(2) is missing (for $(3)): sudo apt-get install -y $(2)"; \
		fi; \
	fi

## chromium: the live view's browser test drives it through Playwright (Playwright's own browser
## download is not used).
chromium:
	$(call debian,test -x /usr/bin/chromium,chromium,the browser test)

## redis-server: the shared state of active-active EPP replicas (--replica-sync, --workers), which
## the replica tests start on a free 127.0.0.1 port.
redis:
	$(call debian,command -v redis-server,redis-server,the replica tests)

## nghttp2-client for h2load, the C load generator of the overload ramp (bench/overload_ramp.py
## --loadgen h2load: a Python one cannot offer 5x the EPP's rate on a small machine) and of
## tests/integration/test_quota_from_epp_e2e.py; its nghttp sends the HTTP/2 request trailers of
## tests/integration/test_gateway_e2e.py.
h2load:
	$(call debian,command -v h2load,nghttp2-client,the overload ramp; the quota and trailers tests)

## Envoy + EPP + 4 simulated vLLM servers on 127.0.0.1; prints how to send a request. Ctrl-C stops it.
run: $(STAMP)
	$(BIN)/epp run

## The whole suite: lint, types, unit and end-to-end tests.
test: install lint typecheck
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check epp tests bench e2e
	$(BIN)/ruff format --check epp tests bench e2e
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

e2e: install
	$(BIN)/pytest -q tests/integration

## Deploy on a kind cluster through a real gateway (needs Docker, kind, helm; says so and exits 0 without).
kind-e2e:
	e2e/kind/run.sh

## Long (tens of minutes): every policy x workload x rate in virtual time, the two engines compared,
## the EPP's overhead in Envoy, a 1,000-endpoint run timed; tables and plots into docs/benchmarks.md.
bench: install
	$(BIN)/epp bench run --jobs 2
	$(BIN)/epp bench report
	$(BIN)/epp bench report --versus
	$(BIN)/epp bench agree --time-scale 2 --doc docs/benchmarks.md
	$(BIN)/epp bench overhead --rate 100 --rate 300 --rounds 5 --seconds 6 --doc docs/benchmarks.md
	$(BIN)/epp bench scale --policy random --policy gie-default --policy ours --doc docs/benchmarks.md

## About five minutes: plain Envoy, a minimal grpc.aio ext_proc server and the EPP side by side
## (64 endpoints, 4k-token prompts, 100 and 300 req/s, five rounds); the table into docs/benchmarks.md.
bench-overhead: install
	$(BIN)/epp bench overhead --rate 100 --rate 300 --rounds 5 --seconds 6 --doc docs/benchmarks.md

## About three minutes: flow control on against off, two EPPs behind one Envoy (GIE's default
## profile with and without the flowControl gate; 2 endpoints, 256-token prompts, 300 req/s, five
## rounds, differences paired per round); the tables into docs/benchmarks.md.
bench-overhead-flow-control: install
	$(BIN)/epp bench overhead --rate 300 --rounds 5 --seconds 6 --endpoints 2 --endpoints-per-process 1 \
	    --prompt-tokens 256 --shared-tokens 128 --versus-config bench/configs/gie-default-flow-control.yaml \
	    --doc docs/benchmarks.md

## The overload ramp through real Envoy with h2load as the load generator (docs/benchmarks.md,
## "Flow control and overload"); several minutes.
bench-overload: install
	$(BIN)/python bench/overload_ramp.py --base 1000 --seconds 8 --prompt-bytes 1024 --loadgen h2load

## A few minutes: the headline workload at two rates, printed (docs untouched).
bench-quick: install
	$(BIN)/epp bench run --workload shared-prefix --rate 10 --rate 20 --results run/bench-quick.json

## Envoy + EPP + simulators (15-25 minutes on a busy 2-core machine), every traffic shape in turn (plain, streamed,
## disconnected mid-stream, unknown models, bad bodies, a new fairness/session id each request),
## rounds of 5,000; per round the EPP's RSS, traced Python heap and what grew, /metrics samples.
## Not part of `make test`. Figures: docs/benchmarks.md (memory over a long run).
soak: install
	$(BIN)/python bench/rss_soak.py --shape mix --heap --config-file bench/configs/soak.yaml \
		--requests 37000 --every 5000 --rate 300

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
