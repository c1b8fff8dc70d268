#!/usr/bin/env bash
# Install the CellView kiosk on an NVIDIA Jetson running JetPack 6, without Docker.
#
#   packaging/jetson/install.sh [--with-systemd] [--src DIR] [--prefix DIR]
#
# Run as the desktop user that will show the kiosk (not root; apt-get runs through sudo).
# Creates PREFIX/.venv (default ~/cellview/.venv) on the system Python 3.10 with
# --system-site-packages, installs cellview with its GUI, swaps PyPI's CPU onnxruntime for
# NVIDIA's onnxruntime-gpu build for JetPack 6 (the models come inside cellview), writes a starter
# kiosk settings file and, with --with-systemd, installs and enables the user unit.
set -euo pipefail

ORT_INDEX_URL="${ORT_INDEX_URL:-https://pypi.jetson-ai-lab.io/jp6/cu126}"
ORT_WHEEL_URL="${ORT_WHEEL_URL:-}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(cd "$HERE/../.." && pwd)"
PREFIX="$HOME/cellview"
WITH_SYSTEMD=0

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "$0"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --with-systemd) WITH_SYSTEMD=1 ;;
        --src) SRC="$(cd "$2" && pwd)"; shift ;;
        --prefix) PREFIX="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

VENV="$PREFIX/.venv"
CONFIG_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/cellview"

if [[ $EUID -eq 0 ]]; then
    echo "Run this as the desktop user who will see the kiosk, not as root." >&2
    exit 1
fi
if [[ "$(uname -m)" != "aarch64" ]]; then
    echo "warning: this is not an aarch64 machine; the JetPack 6 onnxruntime-gpu wheel will not install." >&2
fi
if [[ -r /etc/nv_tegra_release ]] && ! grep -q "R36" /etc/nv_tegra_release; then
    echo "warning: $(head -n 1 /etc/nv_tegra_release) is not L4T R36 (JetPack 6); set ORT_INDEX_URL to match." >&2
fi
if [[ ! -f "$SRC/pyproject.toml" ]]; then
    echo "No CellView source at $SRC (use --src DIR)." >&2
    exit 1
fi

echo "==> System packages"
sudo apt-get update
sudo apt-get install -y --no-install-recommends \
    python3 python3-pip python3-venv \
    libopenslide0 \
    libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
    libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
    libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1

echo "==> Python environment in $VENV"
mkdir -p "$PREFIX"
python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install "${SRC}"

echo "==> NVIDIA onnxruntime-gpu for JetPack 6"
# cellview's metadata pulls PyPI's CPU-only onnxruntime on aarch64; both install the same
# 'onnxruntime' module, so remove it before installing the GPU build.
"$VENV/bin/pip" uninstall -y onnxruntime || true
if [[ -n "$ORT_WHEEL_URL" ]]; then
    "$VENV/bin/pip" install "$ORT_WHEEL_URL"
else
    "$VENV/bin/pip" install --extra-index-url "$ORT_INDEX_URL" onnxruntime-gpu
fi
"$VENV/bin/python" - <<'EOF'
import onnxruntime as ort
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
if "TensorrtExecutionProvider" not in providers:
    print("warning: no TensorRT provider; the kiosk will run on CUDA or CPU.")
EOF

echo "==> Models"
# The bundled models are installed with cellview; models of your own go into the user's models folder.
"$VENV/bin/cellview" models || echo "warning: no models found; cellview models says where to put them." >&2

echo "==> Kiosk settings"
mkdir -p "$PREFIX/inbox" "$PREFIX/outbox" "$CONFIG_DIR"
if [[ -f "$CONFIG_DIR/kiosk.json" ]]; then
    echo "keeping $CONFIG_DIR/kiosk.json"
else
    "$VENV/bin/python" -c "import sys; from cellview.viewer.kiosk.settings import KioskSettings; \
KioskSettings(watch_dir=sys.argv[1], outbox_dir=sys.argv[2]).save(sys.argv[3])" \
        "$PREFIX/inbox" "$PREFIX/outbox" "$CONFIG_DIR/kiosk.json"
    echo "wrote $CONFIG_DIR/kiosk.json (watch $PREFIX/inbox, outbox $PREFIX/outbox)"
fi

if [[ $WITH_SYSTEMD -eq 1 ]]; then
    echo "==> systemd user unit"
    UNIT_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
    mkdir -p "$UNIT_DIR"
    # The unit expects ~/cellview/.venv; point it at PREFIX when installed elsewhere.
    sed "s|%h/cellview/.venv|$VENV|" "$HERE/cellview-kiosk.service" > "$UNIT_DIR/cellview-kiosk.service"
    systemctl --user daemon-reload
    systemctl --user enable cellview-kiosk.service
    echo "enabled; it starts with the next graphical login (systemctl --user start cellview-kiosk to start now)."
fi

echo "Done. Start by hand: $VENV/bin/cellview --kiosk"
