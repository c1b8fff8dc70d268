#!/usr/bin/env bash
# Take OpenSeadragon from the npm registry into cellview/serve/static/vendor/openseadragon/ (committed: the web page
# fetches nothing at run time). Checks the tarball and the file against the sums in that folder's README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=6.1.1
DEST=cellview/serve/static/vendor/openseadragon
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "openseadragon@$VERSION" >/dev/null && tar xzf "openseadragon-$VERSION.tgz")
grep -q "$(sha256sum "$TMP/openseadragon-$VERSION.tgz" | cut -d' ' -f1)" "$DEST/README.md" || { echo "tarball sha256 differs" >&2; exit 1; }
cp "$TMP/package/build/openseadragon/openseadragon.min.js" "$DEST/"
cp "$TMP/package/LICENSE.txt" "$DEST/LICENSE.txt"
grep -q "$(sha256sum "$DEST/openseadragon.min.js" | cut -d' ' -f1)" "$DEST/README.md" || { echo "file sha256 differs" >&2; exit 1; }
echo "OpenSeadragon $VERSION in $DEST"
