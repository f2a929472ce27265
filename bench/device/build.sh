#!/usr/bin/env bash
# Builds outerloop for the lent GPU machine, whose PyTorch is older than the 2.13 that tch
# 0.26 expects (2.11.0+cu130 when last seen there), into .device-build/outerloop (stripped,
# about 15 MB, small enough to travel with a call; the libraries stay there).
#
#   bench/device/build.sh [TORCH_VERSION]      (default 2.11.0; `make device-build`)
#
# A binary built against 2.13 loads there but fails on its first tensor: the libraries must be
# the ones it was compiled against. So this takes that version's headers and libraries from
# its PyPI wheel (once, into the cache directory), makes tch's C wrapper compile against them
# (bench/device/patch_torch_sys.py stubs the few operators that version lacks; outerloop uses
# none of them), and builds with that torch-sys in a target directory of its own. On the
# device, bench/device/check.sh points the loader at its own PyTorch's libraries.
set -euo pipefail
version=${1:-2.11.0}
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/outerloop/device-torch-$version
cd "$root"
mkdir -p "$cache"
if [ ! -f "$cache/.unpacked" ]; then
    echo "Fetching torch==$version's headers and libraries into $cache (once)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: "torch==$version" -d "$cache/wheel"
    unzip -q -o "$cache"/wheel/torch-"$version"-*.whl 'torch/include/*' 'torch/lib/*' -d "$cache"
    rm -rf "$cache/wheel"
    touch "$cache/.unpacked"
fi
if [ ! -f "$cache/torch-sys/.patched" ]; then
    # The torch-sys source this checkout's lock file names.
    source=$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "torch-sys"))')
    rm -rf "$cache/torch-sys"
    cp -r "$source" "$cache/torch-sys"
    python3 bench/device/patch_torch_sys.py "$cache/torch-sys" "$cache/torch"
    touch "$cache/torch-sys/.patched"
fi
# Patching torch-sys rewrites the lock file's entry for it: the checkout's is put back after.
cp Cargo.lock "$cache/Cargo.lock.checkout"
trap 'cp "$cache/Cargo.lock.checkout" Cargo.lock' EXIT
CARGO_TARGET_DIR="$root/target/device-$version" LIBTORCH="$cache/torch" \
    LIBTORCH_BYPASS_VERSION_CHECK=1 \
    cargo build --release --config "patch.crates-io.torch-sys.path=\"$cache/torch-sys\""
mkdir -p .device-build
strip -o .device-build/outerloop "target/device-$version/release/outerloop"
echo "$version" > .device-build/torch-version
echo "built .device-build/outerloop against torch $version"
