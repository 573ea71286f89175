#!/usr/bin/env bash
# Build ggml's CPU backend (the kernels llama.cpp runs) from a source folder that is NOT part of this
# project, for `tools/bench_matmul.py --ggml PREFIX`. Only runs cmake; nothing of ggml is committed here.
#
#   git clone https://github.com/ggml-org/ggml SRC          # or llama.cpp: SRC/ggml is used then
#   tools/build_ggml.sh SRC BUILD                            # prints the PREFIX to pass to --ggml
#
# Native build (GGML_NATIVE: -march=native, so AVX-512 / VNNI / AMX where the CPU has them), shared
# libraries, OpenMP as llama.cpp's default, no GPU backends, no tests or examples. JOBS=n to set the
# parallelism (default: all cores); extra cmake arguments go after BUILD.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 GGML_OR_LLAMA_CPP_SOURCE BUILD_DIR [extra cmake args]" >&2
    exit 2
fi
if [ ! -d "$1" ]; then
    echo "$0: no folder $1" >&2
    exit 2
fi
src=$(cd "$1" && pwd)
[ -f "$src/ggml/CMakeLists.txt" ] && src="$src/ggml"         # a llama.cpp checkout
if [ ! -f "$src/include/ggml-cpu.h" ]; then
    echo "$0: $1 is not a ggml (or llama.cpp) source folder: no include/ggml-cpu.h" >&2
    exit 2
fi
mkdir -p "$2"
build=$(cd "$2" && pwd)
shift 2
jobs=${JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BACKEND_DL=OFF \
    -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF "$@" >&2
cmake --build "$build" --config Release -j "$jobs" >&2
cmake --install "$build" --prefix "$build/install" >&2
echo "$build/install"
