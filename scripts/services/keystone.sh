#!/usr/bin/env bash
# Start / stop a real OpenStack Keystone (identity v3) from PyPI on 127.0.0.1, for tests.
# sqlite database, fernet tokens, served by gunicorn.
#
#   keystone.sh start [PORT] [WORKDIR]  -> prints the auth URL (http://127.0.0.1:PORT/v3) as
#                                          the last line of stdout; logs go to stderr.
#                                          PORT omitted or 0: a free port is chosen.
#   keystone.sh stop  [WORKDIR]         -> stops the server by the PID in WORKDIR/keystone.pid
#   keystone.sh url   [WORKDIR]         -> prints the URL if the server is alive, else exits 1
#
# Bootstrap account: user admin, password $IMGPIPE_KEYSTONE_ADMIN_PASSWORD (default "secret"),
# project admin, domain Default, roles admin/member/reader/manager, region RegionOne; the
# catalog holds only the identity service (add others through the API).
#
#   IMGPIPE_KEYSTONE_VENV      venv to create/reuse
#                              (default ${XDG_CACHE_HOME:-$HOME/.cache}/imgpipe/keystone-venv)
#   IMGPIPE_KEYSTONE_PIP_SPEC  default "keystone==30.0.0 gunicorn==27.0.1"
#   IMGPIPE_KEYSTONE_CONSTRAINTS  optional pip constraints file for the install
#   IMGPIPE_KEYSTONE_WAIT_S    seconds to wait for the API to answer (default 90)
#   IMGPIPE_SERVICE_OWNER_PID  optional: a watchdog stops the server when this PID exits
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$HERE/common.sh"
NAME=keystone
log() { svc_log "$NAME" "$@"; }

cmd="${1:-start}"
case "$cmd" in
  start) PORT="${2:-0}"; WORKDIR="${3:-${TMPDIR:-/tmp}/imgpipe-keystone}" ;;
  stop | url) WORKDIR="${2:-${TMPDIR:-/tmp}/imgpipe-keystone}" ;;
  *) echo "usage: $0 start [PORT] [WORKDIR] | stop [WORKDIR] | url [WORKDIR]" >&2; exit 2 ;;
esac
PIDFILE="$WORKDIR/keystone.pid"

if [ "$cmd" = stop ]; then
  svc_stop_pidfile "$NAME" "$PIDFILE"
  exit 0
fi
if [ "$cmd" = url ]; then
  svc_alive "$(cat "$PIDFILE" 2>/dev/null || true)" && cat "$WORKDIR/keystone.url" && exit 0
  exit 1
fi

t0=$(date +%s)
WORKDIR="$(mkdir -p "$WORKDIR" && cd "$WORKDIR" && pwd)"
VENV="${IMGPIPE_KEYSTONE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/imgpipe/keystone-venv}"
PIP_SPEC="${IMGPIPE_KEYSTONE_PIP_SPEC:-keystone==30.0.0 gunicorn==27.0.1}"
PW="${IMGPIPE_KEYSTONE_ADMIN_PASSWORD:-secret}"
PY="${PYTHON:-python3}"

if [ -f "$PIDFILE" ] && svc_alive "$(cat "$PIDFILE")"; then
  log "already running, pid $(cat "$PIDFILE")"
  cat "$WORKDIR/keystone.url"
  exit 0
fi
rm -f "$PIDFILE"

# --- venv: created once, shared by concurrent callers, rebuilt when the spec changes.
svc_venv "$NAME" "$VENV" "$PIP_SPEC" "${IMGPIPE_KEYSTONE_CONSTRAINTS:-}" gunicorn keystone-manage || exit 1

if [ "$PORT" = 0 ]; then
  PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || { log "bad port: $PORT"; exit 2; }
URL="http://127.0.0.1:$PORT/v3"

mkdir -p "$WORKDIR/fernet" "$WORKDIR/credential" "$WORKDIR/log"
chmod 700 "$WORKDIR/fernet" "$WORKDIR/credential"
cat >"$WORKDIR/keystone.conf" <<CONF
[DEFAULT]
log_file = $WORKDIR/log/keystone.log
[database]
connection = sqlite:///$WORKDIR/keystone.sqlite
[token]
provider = fernet
[fernet_tokens]
key_repository = $WORKDIR/fernet
[fernet_receipts]
key_repository = $WORKDIR/fernet
[credential]
key_repository = $WORKDIR/credential
CONF
# keystone parses sys.argv with oslo.config, so gunicorn's own arguments would make every
# worker exit ("unrecognized arguments") and respawn forever: strip argv in a WSGI shim.
cat >"$WORKDIR/ks_wsgi.py" <<'PYEOF'
import sys
sys.argv = sys.argv[:1]
from keystone.wsgi.api import application  # noqa: E402,F401
PYEOF

# The bootstrap writes the port into the catalog, so a DB made for another port is redone.
if [ ! -f "$WORKDIR/keystone.sqlite" ] || [ "$(cat "$WORKDIR/keystone.url" 2>/dev/null || true)" != "$URL" ]; then
  rm -f "$WORKDIR/keystone.sqlite"
  KM=("$VENV/bin/keystone-manage" --config-file "$WORKDIR/keystone.conf")
  u="$(id -un)"
  g="$(id -gn)"
  {
    "${KM[@]}" db_sync &&
      "${KM[@]}" fernet_setup --keystone-user "$u" --keystone-group "$g" &&
      "${KM[@]}" credential_setup --keystone-user "$u" --keystone-group "$g" &&
      "${KM[@]}" bootstrap --bootstrap-password "$PW" \
        --bootstrap-admin-url "$URL" --bootstrap-public-url "$URL" \
        --bootstrap-internal-url "$URL" --bootstrap-region-id RegionOne
  } >"$WORKDIR/log/manage.log" 2>&1 ||
    { log "keystone-manage failed"; tail -20 "$WORKDIR/log/manage.log" >&2; exit 1; }
fi
echo "$URL" >"$WORKDIR/keystone.url"

OS_KEYSTONE_CONFIG_FILES="$WORKDIR/keystone.conf" nohup "$VENV/bin/gunicorn" --no-control-socket \
  --chdir "$WORKDIR" --bind "127.0.0.1:$PORT" --workers 1 --threads 4 --timeout 120 \
  --error-logfile "$WORKDIR/log/gunicorn.log" \
  ks_wsgi:application >>"$WORKDIR/log/gunicorn.out" 2>&1 </dev/null &
echo $! >"$PIDFILE"

if ! svc_wait_url "$NAME" "$URL" "200" "$(cat "$PIDFILE")" "${IMGPIPE_KEYSTONE_WAIT_S:-90}" \
  "$WORKDIR/log/gunicorn.log"; then
  svc_stop_pidfile "$NAME" "$PIDFILE"
  exit 1
fi
if [ -n "${IMGPIPE_SERVICE_OWNER_PID:-}" ]; then
  if ! svc_watchdog "$NAME" "$PIDFILE" "$IMGPIPE_SERVICE_OWNER_PID" "$WORKDIR/log/watchdog.log"; then
    svc_stop_pidfile "$NAME" "$PIDFILE"
    exit 1
  fi
fi
log "up at $URL (pid $(cat "$PIDFILE")) after $(( $(date +%s) - t0 ))s"
echo "$URL"
