# Entry points (see README): `make demo`, `make test` and `make lint` (each sets up .venv first),
# and `make test-aarch64` (the CPU kernel built for 64-bit ARM and run under qemu; no Python).
VENV       ?= .venv
PYTHON     ?= python3
# The CPU wheel keeps CI and laptops light; override e.g. TORCH_SPEC='torch==2.11.*' on a GPU box.
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python

.PHONY: setup demo test lint test-aarch64 clean

setup: $(VENV)/.installed

# The native CPU scan is compiled by the install: rebuild it when its sources change.
$(VENV)/.installed: pyproject.toml setup.py plugins/cpu/bi_selective_scan_cpu.cpp plugins/cpu/compile_flags.txt $(wildcard plugins/include/vimdeploy/*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check '$(TORCH_SPEC)'
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'tensorrt-stubs==10.13.0.35.1'
	touch $@

demo: setup
	$(VENV)/bin/vimdeploy demo

test: setup
	$(PY) -m pytest -ra

# ruff's rules are in pyproject.toml ([tool.ruff]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The CPU kernel's C++ test driver (plugins/tests/cpu_scan_test.cpp) built for this machine and
# cross-built for aarch64 with NEON (plugins/cmake/aarch64-linux-gnu.cmake), each run by ctest
# (the ARM one under qemu-aarch64), then the two builds' outputs compared. Needs cmake and
# Debian's g++-aarch64-linux-gnu and qemu-user-static.
ARM_TOOLCHAIN := $(CURDIR)/plugins/cmake/aarch64-linux-gnu.cmake
test-aarch64:
	@command -v aarch64-linux-gnu-g++ > /dev/null && command -v qemu-aarch64-static > /dev/null || \
	  { echo "error: needs g++-aarch64-linux-gnu and qemu-user-static (apt-get install them)" >&2; exit 1; }
	cmake -S plugins -B build/cpu-host -DVIMDEPLOY_CPU_ONLY=ON > /dev/null
	cmake --build build/cpu-host --target vimdeploy_cpu_scan_test -j 2 > /dev/null
	cmake -S plugins -B build/cpu-aarch64 -DVIMDEPLOY_CPU_ONLY=ON -DCMAKE_TOOLCHAIN_FILE=$(ARM_TOOLCHAIN) > /dev/null
	cmake --build build/cpu-aarch64 --target vimdeploy_cpu_scan_test -j 2 > /dev/null
	cd build/cpu-host && ctest --output-on-failure
	cd build/cpu-aarch64 && ctest --output-on-failure
	build/cpu-host/vimdeploy_cpu_scan_test --compare build/cpu-host/cpu_scan_outputs.bin build/cpu-aarch64/cpu_scan_outputs.bin

clean:
	rm -rf $(VENV) vimdeploy-demo .pytest_cache build
