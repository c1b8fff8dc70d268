#!/usr/bin/env bash
# Build the one-folder bundle into dist/cellview/ and smoke-test it.
# Usage: packaging/pyinstaller/build.sh [SLIDE]   (run from anywhere; uses the active Python)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
python -m PyInstaller --version >/dev/null 2>&1 || { echo "PyInstaller missing: pip install pyinstaller" >&2; exit 2; }
python -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$ROOT/dist" --workpath "$ROOT/build/pyinstaller" "$HERE/cellview.spec"
echo "bundle: $ROOT/dist/cellview ($(du -sh "$ROOT/dist/cellview" | cut -f1))"
SLIDE="${1:-}"
if [[ -n "$SLIDE" ]]; then
    "$HERE/smoke_test.sh" "$SLIDE"
fi
