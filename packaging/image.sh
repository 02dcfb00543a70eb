#!/usr/bin/env bash
# Builds vigil's image with the local Docker engine: one image for the controller and the agent
# (they differ only in arguments). No base image can be pulled, so it is `FROM scratch`: the
# stripped release binary and exactly the shared libraries it links (from ldd), a passwd entry
# for the non-root user the controller runs as (the agent's DaemonSet runs it as root, to read
# the host), and labels.
#
#   packaging/image.sh            build vigil:<crate version>; print its name and size
#
# Progress goes to stderr; the image name goes to stdout.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=${VIGIL_IMAGE:-vigil:$VERSION}
CONTEXT=$ROOT/target/image
log() { printf '[image] %s\n' "$*" >&2; }

# The release build lives outside the clone, so that it is built once per machine and then only
# what changed (CI starts from a fresh clone every time).
export CARGO_TARGET_DIR=${VIGIL_IMAGE_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil/image-target}
BIN=$CARGO_TARGET_DIR/release/vigil
log "building the release binary in $CARGO_TARGET_DIR"
cargo build --release --locked --bin vigil >&2
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT/rootfs/etc" "$CONTEXT/rootfs/tmp"
strip -o "$CONTEXT/rootfs/vigil" "$BIN"
# The dynamic loader and every library the binary needs, at the paths it looks for them.
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
	mkdir -p "$CONTEXT/rootfs$(dirname "$lib")"
	cp -L "$lib" "$CONTEXT/rootfs$lib"
done
printf 'root:x:0:0:root:/:/vigil\nvigil:x:65532:65532:vigil:/:/vigil\n' >"$CONTEXT/rootfs/etc/passwd"
printf 'root:x:0:\nvigil:x:65532:\n' >"$CONTEXT/rootfs/etc/group"
chmod 1777 "$CONTEXT/rootfs/tmp"
cp packaging/Dockerfile "$CONTEXT/Dockerfile"
log "building $IMAGE"
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
docker build -q -t "$IMAGE" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" "$CONTEXT" >&2
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "$IMAGE: $((size / 1024 / 1024)) MiB ($size bytes)"
echo "$IMAGE"
