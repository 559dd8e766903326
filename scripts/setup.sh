#!/usr/bin/env bash
# setup.sh -- install the Debian 12 packages Ticket needs (only those missing), then
# configure and build into ./build.  Safe to run again.
#   scripts/setup.sh [extra cmake options]
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build pkg-config
      clang-16 llvm-16-dev libclang-rt-16-dev libfuzzer-16-dev
      flatbuffers-compiler libflatbuffers-dev python3-flatbuffers
      libdnnl-dev zlib1g-dev liblzma-dev
      python3-torch python3-numpy python3-onnx
      dataset-fashion-mnist gnuplot-nox valgrind
      qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
ninja -C build
