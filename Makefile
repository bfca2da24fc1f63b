# One entry point for developers and CI. Every target installs what it needs.
#   make demo   the main job: bookinfo as local processes with embedded meshes fed by the
#               config service, seven live scenes
#   make test   lint, type-check and the whole test suite
#   make bench  the benchmarks (not part of the tests; see docs/performance.md)
#   make test-matrix  the framework integrations against their oldest and latest versions
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# every framework integration is its own distribution; installed editable with its test extra
INTEGRATIONS := $(patsubst %/pyproject.toml,%,$(wildcard integrations/*/pyproject.toml))

.PHONY: dev demo test lint typecheck pytest bench clean etcd test-matrix

dev: $(STAMP)

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(INTEGRATIONS))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' $(foreach i,$(INTEGRATIONS),-e '$(i)[test]')
	touch $(STAMP)

demo: dev
	$(VENV)/bin/meshctl validate examples/bookinfo
	$(PY) -m meshsdk.demo

lint: dev
	$(VENV)/bin/ruff check meshsdk tests bench integrations scripts examples

typecheck: dev
	$(VENV)/bin/mypy
	$(if $(INTEGRATIONS),$(VENV)/bin/mypy $(foreach i,$(INTEGRATIONS),$(i)/meshsdk_$(notdir $(i))))

# the config service's HA tests run a real etcd: Debian's etcd-server, installed if absent
etcd:
	@command -v etcd >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q etcd-server >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q etcd-server >/dev/null; }; \
	  else sudo apt-get install -y -q etcd-server >/dev/null; fi; }

pytest: dev etcd
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

bench: dev
	$(PY) bench/config_load.py
	$(PY) bench/sdk_overhead.py
	$(PY) bench/otel_sdk_floor.py
	$(PY) bench/security.py
	$(PY) bench/middleware_overhead.py
	$(PY) bench/controlplane_scale.py
	$(PY) bench/instructions.py
	$(PY) bench/cache_pressure.py

# each framework integration against its oldest and latest supported version
# (integrations/matrix.toml), in throwaway venvs under .matrix/; `make test` runs the installed
test-matrix: dev
	$(PY) scripts/test_matrix.py

clean:
	rm -rf $(VENV) .matrix .pytest_cache .mypy_cache .ruff_cache .hypothesis
