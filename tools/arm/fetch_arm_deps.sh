#!/usr/bin/env bash
# Everything `make test-arm` needs besides the repository, into DEST (default .deps/arm):
#   1. the Debian cross compilers (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf and the target
#      C/C++ libraries and headers: libc6-dev-{arm64,armhf}-cross, libstdc++6-*-cross), installed
#      with apt-get from the system's own sources when missing;
#   2. DEST/qemu/qemu-{aarch64,arm}: Debian trixie's qemu-user (static binaries; bookworm's qemu 7.2
#      crashes while ONNX Runtime loads);
#   3. DEST/armhf-sysroot: trixie's libonnxruntime1.21:armhf and its dependency closure (libc included),
#      the root that `qemu-arm -L` runs armv7 programs in;
#   4. DEST/aarch64/libonnxruntime.so.*: from the onnxruntime manylinux aarch64 wheel on PyPI, version
#      ORT_VERSION (default: the onnxruntime installed in the venv), downloaded with pip.
# 2 and 3 come from a private apt state directory (own sources list, lists, cache and an empty dpkg
# status), so the system's apt configuration and package state are not touched; the archive keyring
# verifies the downloads. Nothing is committed: DEST is under .deps/ (git-ignored).
set -euo pipefail
DEST=${1:-.deps/arm}
PY=${PYTHON:-.venv/bin/python}
SUITE=${ARM_DEBIAN_SUITE:-trixie}
ORT_ARMHF_PKG=${ORT_ARMHF_PACKAGE:-libonnxruntime1.21}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

say() { echo "fetch_arm_deps: $*"; }

# ---- 1. cross compilers (system packages from the configured bookworm sources) ----
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf)
[ -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ] || need+=(libstdc++6-arm64-cross)
[ -e /usr/arm-linux-gnueabihf/lib/libstdc++.so.6 ] || need+=(libstdc++6-armhf-cross)
# the target C libraries and headers (math.h needs bits/libc-header-start.h): not pulled in by the
# compilers with --no-install-recommends
[ -e /usr/aarch64-linux-gnu/include/bits/libc-header-start.h ] || need+=(libc6-dev-arm64-cross)
[ -e /usr/arm-linux-gnueabihf/include/bits/libc-header-start.h ] || need+=(libc6-dev-armhf-cross)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "fetch_arm_deps: missing ${need[*]}; install them (Debian/Ubuntu: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  say "installing ${need[*]}"
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
  # check that the install brought what the builds use, naming what is still missing
  for f in /usr/aarch64-linux-gnu/include/bits/libc-header-start.h /usr/arm-linux-gnueabihf/include/bits/libc-header-start.h \
           /usr/aarch64-linux-gnu/lib/libstdc++.so.6 /usr/arm-linux-gnueabihf/lib/libstdc++.so.6; do
    [ -e "$f" ] || { echo "fetch_arm_deps: $f still missing after installing ${need[*]}" >&2; exit 1; }
  done
  for c in aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc; do
    command -v $c >/dev/null || { echo "fetch_arm_deps: $c still missing after installing ${need[*]}" >&2; exit 1; }
  done
fi

# ---- 2 + 3. trixie packages through a private apt state ----
if [ ! -x "$DEST/qemu/qemu-aarch64" ] || [ ! -x "$DEST/qemu/qemu-arm" ] || [ ! -e "$DEST/armhf-sysroot/.complete" ]; then
  for tool in apt-get dpkg-deb; do
    command -v $tool >/dev/null || { echo "fetch_arm_deps: $tool not found (a Debian-based host is needed)" >&2; exit 1; }
  done
  mirror=$("$(dirname "$0")/../debian_mirror.sh")
  hostarch=$(dpkg --print-architecture)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/etc/preferences.d"
  : >"$work/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg arch=$hostarch,armhf] $mirror $SUITE main" >"$work/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::Etc::preferences=$work/etc/preferences" -o "Dir::Etc::preferencesparts=$work/etc/preferences.d"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work/archives"
        -o "Dir::State::status=$work/status" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
        -o "APT::Architecture=$hostarch" -o "APT::Architectures::=$hostarch" -o "APT::Architectures::=armhf")
  say "qemu-user and $ORT_ARMHF_PKG:armhf (with its dependencies) from $mirror $SUITE"
  apt-get "${opts[@]}" -qq update
  apt-get "${opts[@]}" -qq -y --download-only --no-install-recommends install qemu-user "$ORT_ARMHF_PKG:armhf" >/dev/null
  rm -rf "$DEST/qemu" "$DEST/armhf-sysroot"
  mkdir -p "$DEST/qemu" "$DEST/armhf-sysroot"
  dpkg-deb -x "$work"/archives/qemu-user_*_"$hostarch".deb "$work/qemu"
  cp "$work/qemu/usr/bin/qemu-aarch64" "$work/qemu/usr/bin/qemu-arm" "$DEST/qemu/"
  for deb in "$work"/archives/*_armhf.deb; do dpkg-deb -x "$deb" "$DEST/armhf-sysroot"; done
  # trixie has a merged /usr: /lib is a symlink that base-files would create
  [ -e "$DEST/armhf-sysroot/lib" ] || ln -s usr/lib "$DEST/armhf-sysroot/lib"
  ls "$work"/archives/*_armhf.deb | xargs -n1 basename >"$DEST/armhf-sysroot/.complete"
  say "$("$DEST/qemu/qemu-aarch64" --version | head -1); armhf sysroot: $(wc -l <"$DEST/armhf-sysroot/.complete") packages"
fi

# ---- 4. ONNX Runtime for aarch64 from the PyPI wheel ----
if ! ls "$DEST"/aarch64/libonnxruntime.so.1.* >/dev/null 2>&1; then
  [ -x "$PY" ] || { echo "fetch_arm_deps: $PY not found (run make venv, or set PYTHON=)" >&2; exit 1; }
  ver=${ORT_VERSION:-$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)')}
  pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  wheels=$(mktemp -d)
  say "onnxruntime $ver manylinux aarch64 wheel from PyPI"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
    -d "$wheels" "onnxruntime==$ver"
  mkdir -p "$DEST/aarch64"
  "$PY" - "$wheels" "$DEST/aarch64" <<'EOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("onnxruntime-*.whl"))
dest = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime.so"):
            (dest / pathlib.Path(name).name).write_bytes(z.read(name))
            print(f"fetch_arm_deps: {wheel.name}: {name}")
EOF
  rm -rf "$wheels"
fi
