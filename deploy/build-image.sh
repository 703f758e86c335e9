#!/usr/bin/env bash
# Builds the metalraft container image from a static musl binary.
#
#   deploy/build-image.sh [TAG]
#
# Without TAG it tags metalraft:latest and metalraft:<workspace version>
# (0.1.0, the tag deploy/k8s uses).
#
# Needs: rustup target x86_64-unknown-linux-musl (added here if missing),
# a C compiler (ring, rustls' crypto provider, compiles some freestanding C;
# .cargo/config.toml points the musl target at the host gcc; no cmake/nasm),
# docker.
# Honours CARGO_TARGET_DIR. SKIP_CARGO=1 reuses an existing binary.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)"
TAG="${1:-metalraft:latest}"
EXTRA_TAG=""
[ $# -ge 1 ] || EXTRA_TAG="metalraft:$VERSION"
TARGET=x86_64-unknown-linux-musl
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/$TARGET/release/metalraft"

if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
if [ "${SKIP_CARGO:-0}" != 1 ] || [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build --release -p metalraft --target "$TARGET")
fi

CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
cp "$BIN" "$CTX/metalraft"
strip "$CTX/metalraft" 2>/dev/null || true
# A std-only probe, compiled directly by rustc (a second or two).
rustc --edition 2021 --target "$TARGET" -C opt-level=s -C strip=symbols \
    -C target-feature=+crt-static -o "$CTX/healthcheck" "$ROOT/deploy/healthcheck.rs"
# Make sure both really are static: a scratch image has no dynamic loader.
for f in "$CTX/metalraft" "$CTX/healthcheck"; do
    if file "$f" 2>/dev/null | grep -q 'dynamically linked'; then
        echo "build-image: $f is dynamically linked" >&2
        exit 1
    fi
done
mkdir -p "$CTX/rootfs/data" "$CTX/rootfs/tmp" "$CTX/rootfs/etc"
chmod 0700 "$CTX/rootfs/data"
chmod 1777 "$CTX/rootfs/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\nmetalraft:x:65532:65532:metalraft:/data:/sbin/nologin\n' >"$CTX/rootfs/etc/passwd"
printf 'root:x:0:\nmetalraft:x:65532:\n' >"$CTX/rootfs/etc/group"
cp "$ROOT/deploy/Dockerfile" "$CTX/Dockerfile"

docker build -q -t "$TAG" ${EXTRA_TAG:+-t "$EXTRA_TAG"} "$CTX" >/dev/null
echo "built $TAG${EXTRA_TAG:+ and $EXTRA_TAG} ($(docker image inspect -f '{{.Size}}' "$TAG") bytes)"
