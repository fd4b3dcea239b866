#!/usr/bin/env bash
# `make run`: the whole stack on loopback in the foreground. Ctrl-C / SIGTERM stops every child it started.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
export WARDROBE_DATA_DIR=${WARDROBE_DATA_DIR:-$PWD/var}
export WARDROBE_U2NET_HOME=${WARDROBE_U2NET_HOME:-$WARDROBE_DATA_DIR/models}
mkdir -p "$WARDROBE_DATA_DIR"

pids=()
stop() {
    trap - INT TERM EXIT
    [ ${#pids[@]} -gt 0 ] || exit 0
    echo "==> stopping ${#pids[@]} process(es)" >&2
    # Huey stops gracefully on SIGINT, gunicorn on SIGTERM; give them time, then insist.
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    exit 0
}
trap stop INT TERM EXIT

start() { "$@" & pids+=($!); }

# Background workers share this box with the API, whose latency must win whatever the backlog: cutouts run
# SCHED_IDLE (only on CPU the API leaves idle; a backlog shows in the job's queue answer and in /metrics), the
# light ai worker at nice 5.
if [ -x .venv/bin/wardrobe-worker ]; then
    # One ONNX thread: a second one only pays off on cores the API is not using.
    WARDROBE_ONNX_THREADS=${WARDROBE_ONNX_THREADS:-1} start chrt --idle 0 wardrobe-worker images
    start nice -n 5 wardrobe-worker ai
fi
start gunicorn -c conf/gunicorn.conf.py
echo "==> Wardrobe API on http://${WARDROBE_BIND:-127.0.0.1:8000} — try: make token" >&2
wait -n "${pids[@]}" || true
echo "==> a process exited; stopping the rest" >&2
stop
