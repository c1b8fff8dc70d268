#!/usr/bin/env bash
# Smoke-test a built bundle: offscreen start, open SLIDE, wait for it to paint, exit 0.
# Runs from a scratch directory with a clean environment so nothing outside the bundle
# (the repository, the virtual environment, a user's models) can make it pass by accident.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUNDLE="${BUNDLE:-$ROOT/dist/cellview}"
SLIDE="$(realpath "${1:?usage: smoke_test.sh SLIDE}")"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
cd "$SCRATCH"
env -i HOME="$SCRATCH" PATH=/usr/bin:/bin LANG=C.UTF-8 QT_QPA_PLATFORM=offscreen \
    XDG_CONFIG_HOME="$SCRATCH/config" XDG_DATA_HOME="$SCRATCH/data" XDG_CACHE_HOME="$SCRATCH/cache" \
    timeout 180 "$BUNDLE/cellview" --smoke-test "$SLIDE"
env -i HOME="$SCRATCH" PATH=/usr/bin:/bin LANG=C.UTF-8 timeout 60 "$BUNDLE/cellview" --version
# The headless batch path through the bundle: pipeline, bundled model, every exporter.
env -i HOME="$SCRATCH" PATH=/usr/bin:/bin LANG=C.UTF-8 XDG_CACHE_HOME="$SCRATCH/cache" \
    timeout 300 "$BUNDLE/cellview" analyze "$SLIDE" --out "$SCRATCH/out" --device cpu
for ext in csv geojson png json; do
    compgen -G "$SCRATCH/out/*.$ext" >/dev/null || { echo "smoke test: no .$ext written" >&2; exit 1; }
done
echo "smoke test: analyze wrote $(find "$SCRATCH/out" -type f | wc -l) files"
