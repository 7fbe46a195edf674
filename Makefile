# The README's two commands are `make demo` and `make test`; both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: deps venv demo test lint unit coverage integration bench bench-quick soak clean test-guest test-lvm bench-lvm

deps:
	./scripts/install-deps

$(STAMP): pyproject.toml scripts/link-system-bindings
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	./scripts/link-system-bindings $(VENV)
	touch $(STAMP)

venv: $(STAMP)

demo: deps venv
	./scripts/demo

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: deps venv lint
	$(BIN)/pytest tests/unit tests/integration

# LVM on real device-mapper, inside the Debian test guest (cached in /var/cache/vmdisk-tests):
# about 7 minutes under TCG on a quiet machine once the image exists (15 with seven other
# runs beside it), 2 more to build it.
test-lvm: deps venv
	$(BIN)/pytest -s -q -p no:randomly tests/lvm

# Running guests (start, ssh, stop via qemu and via libvirt) with the cached Debian cloud-init
# guest under TCG: about 6 minutes once the image exists.
test-guest: deps venv
	$(BIN)/pytest -s -q -p no:randomly tests/guests

# bench/lvm.py in the same guest (thick vs thin warm creates against bare lvcreate): JSON on
# stdout and in bench/out/lvm.json.
bench-lvm: deps venv
	mkdir -p bench/out
	VMDISK_LVM_RUN=bench VMDISK_LVM_BENCH_OUT=$(CURDIR)/bench/out/lvm.json \
		$(BIN)/pytest -s -q -p no:randomly tests/lvm

unit: venv
	$(BIN)/pytest tests/unit

# The unit tier alone (no root, no system tools) with line coverage of src/vmdisk.
coverage: venv
	$(BIN)/pytest tests/unit -q -p no:randomly --cov --cov-report=term-missing

integration: deps venv
	$(BIN)/pytest tests/integration

bench: deps venv
	$(BIN)/python -m bench.run --full

bench-quick: deps venv
	$(BIN)/python -m bench.run --quick

soak: deps venv
	SOAK=1 $(BIN)/pytest --timeout 3600 tests/soak tests/integration/test_crash.py

clean:
	rm -rf $(VENV) demo build *.egg-info .pytest_cache .mypy_cache .ruff_cache
