#!/usr/bin/env bash
# Fetches ONNX Runtime's C headers (the PyPI wheel ships none) from Debian trixie's
# libonnxruntime-dev into DEST (default .deps/onnxruntime/include), without touching the
# system's apt configuration: apt runs with a private sources list, state and cache dir.
# Uses the mirror the system's apt sources already use; the archive keyring signs it.
set -euo pipefail
DEST=${1:-.deps/onnxruntime/include}
PKG=${ORT_DEV_PACKAGE:-libonnxruntime-dev}
SUITE=${ORT_DEBIAN_SUITE:-trixie}
if [ -f "$DEST/onnxruntime_c_api.h" ]; then exit 0; fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "fetch_ort_headers: apt-get/dpkg-deb not found; set ORT_INCLUDE_DIR to a directory holding onnxruntime_c_api.h" >&2
  exit 1
fi
mirror=$("$(dirname "$0")/debian_mirror.sh")
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb [signed-by=$keyring] $mirror $SUITE main" >"$work/sources.list"
opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work/archives"
      -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
echo "fetch_ort_headers: $PKG from $mirror $SUITE"
apt-get "${opts[@]}" -qq update
(cd "$work" && apt-get "${opts[@]}" -qq download "$PKG")
dpkg-deb -x "$work"/"$PKG"_*.deb "$work/x"
mkdir -p "$DEST"
cp "$work"/x/usr/include/onnxruntime/*.h "$DEST"/
echo "fetch_ort_headers: headers in $DEST ($(grep -m1 -o 'ORT_API_VERSION [0-9]*' "$DEST/onnxruntime_c_api.h"))"
