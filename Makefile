# Entry points (see README): `make demo`, `make test` and `make lint` (each sets up .venv first),
# and `make test-aarch64` (the CPU kernel built for 64-bit ARM and run under qemu; no Python).
VENV        ?= .venv
PYTHON      ?= python3
# PyTorch's CPU build, from PyTorch's own index: the wheel on PyPI is the CUDA build (with
# its nvidia-* wheels, gigabytes). A pip configured with a local copy of the CPU wheel (find-links)
# takes it from there when the index cannot be reached. On a GPU box, e.g.
# TORCH_SPEC='torch==2.11.*' TORCH_INDEX=https://download.pytorch.org/whl/cu128.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup demo test lint test-aarch64 clean

setup: $(VENV)/.installed

# A venv with PyTorch (from TORCH_INDEX; its own dependencies come with the package's) and
# vimdeploy with the extras $(1). The native libraries are compiled by the install (setup.py):
# rebuilt when their sources change. With ONNXRUNTIME_INCLUDE_DIR set to a folder holding ONNX
# Runtime's onnxruntime_c_api.h, the install also builds the native ONNX Runtime library.
NATIVE_SOURCES := pyproject.toml setup.py plugins/cpu/bi_selective_scan_cpu.cpp plugins/cpu/compile_flags.txt \
                  plugins/onnxruntime/bi_selective_scan_ort.cpp $(wildcard plugins/include/vimdeploy/*.h)
define install
	$(PYTHON) -m venv $(VENV)
	$(PIP) --no-deps --retries 1 --index-url $(TORCH_INDEX) '$(TORCH_SPEC)'
	$(PIP) -e '.[$(1)]'
endef

# Everything `make test` and `make lint` need: the dev extra (tests, Triton, mypy, ruff), which
# holds the demo and export extras.
$(VENV)/.installed: $(NATIVE_SOURCES)
	$(call install,dev)
	$(PIP) --no-deps 'tensorrt-stubs==10.13.0.35.1'
	touch $@ $(VENV)/.installed-demo

$(VENV)/.installed-demo: $(NATIVE_SOURCES)
	$(call install,demo)
	touch $@

# The demo extra only (no Triton, no mypy, no numpy < 2), or the venv `make setup` made.
demo: $(VENV)/.installed-demo
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
