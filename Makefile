# Dilu developer entry points. `make run` and `make test` are the README's quick start;
# each creates the virtual environment and installs what it needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run up test test-unit test-integration gen lint shim bench-shim prometheus clean

# Installing also compiles the CUDA shim (a second, with the system C compiler); without a
# compiler the shim is skipped here and fails with a clear error when a node needs it.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m services.node_agent.shim build || echo "CUDA shim not built (see above)"
	touch $(STAMP)

## run: the main job: a throw-away local stack on simulated GPUs with the demo
## (SECURE=1: in secure mode, TLS and authentication everywhere: dilu demo --secure)
run: $(STAMP)
	$(VENV)/bin/dilu demo $(if $(filter 1,$(SECURE)),--secure)

## up: the local stack on the fixed default ports until Ctrl-C (SECURE=1: dilu up --secure)
up: $(STAMP)
	$(VENV)/bin/dilu up $(if $(filter 1,$(SECURE)),--secure)

## test: unit tests, then integration tests with real nats-server and service processes
test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

## prometheus: Debian's Prometheus server and promtool, unpacked into the venv for the tests
prometheus: $(VENV)/prometheus/usr/bin/prometheus

$(VENV)/prometheus/usr/bin/prometheus: scripts/install_prometheus.sh | $(STAMP)
	scripts/install_prometheus.sh $(VENV)/prometheus

## gen: regenerate gen/python from protos/ (commit the result)
gen: $(STAMP)
	$(PY) scripts/gen_protos.py

## shim: compile the CUDA shim (libdilu_shim.so) and print its path
shim: $(STAMP)
	$(PY) -m services.node_agent.shim build

## bench-shim: the shim's overhead, shares and reaction on the fake driver (no GPU needed)
bench-shim: $(STAMP)
	$(PY) bench/shim_fake.py

## lint: ruff and mypy
lint: $(STAMP)
	$(VENV)/bin/ruff check services tests scripts bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
