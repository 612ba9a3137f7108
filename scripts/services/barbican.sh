#!/usr/bin/env bash
# Start / stop a real OpenStack Barbican (key manager) API from PyPI on 127.0.0.1, for tests.
# sqlite database, store_crypto + simple_crypto with a fixed test KEK, no keystone.
#
#   barbican.sh start [PORT] [WORKDIR]  -> prints the base URL (http://127.0.0.1:PORT) as the
#                                          last line of stdout; logs go to stderr.
#                                          PORT omitted or 0: a free port is chosen.
#   barbican.sh stop  [WORKDIR]         -> stops the server by the PID in WORKDIR/barbican.pid
#   barbican.sh url   [WORKDIR]         -> prints the URL if the server is alive, else exits 1
#
# WORKDIR (default ${TMPDIR:-/tmp}/imgpipe-barbican) holds all state: config, sqlite DB, logs,
# PID file. The venv is cached across runs (installing takes ~30 s, starting ~3.5 s):
#
#   IMGPIPE_BARBICAN_VENV      venv to create/reuse
#                              (default ${XDG_CACHE_HOME:-$HOME/.cache}/imgpipe/barbican-venv)
#   IMGPIPE_BARBICAN_AUTH      noauth (default) | headerauth
#      noauth:     every request runs as one fixed identity (project imgpipe-noauth, roles
#                  admin,member,reader). A tiny paste filter in WORKDIR fills in the trusted
#                  identity headers when a request carries none; X-Auth-Token is ignored.
#                  (Barbican's own "unauthenticated-context" filter is broken in 23.0.0:
#                  AttributeError: request_id -> 500 on every /v1 call.)
#      headerauth: keystonemiddleware's trusted headers are required on every request:
#                  X-Identity-Status: Confirmed, X-Project-Id, X-Roles (member to store a secret,
#                  member/admin of the same project to read a payload), X-User-Id; else 401.
#   IMGPIPE_BARBICAN_PIP_SPEC  default "barbican==23.0.0 gunicorn==27.0.1"
#   IMGPIPE_BARBICAN_CONSTRAINTS  optional pip constraints file for the install
#   IMGPIPE_BARBICAN_WAIT_S    seconds to wait for the API to answer (default 60)
#   IMGPIPE_SERVICE_OWNER_PID  optional: a watchdog stops the server when this PID exits
#                              (tests pass their own PID so a killed test leaks nothing)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$HERE/common.sh"
NAME=barbican
log() { svc_log "$NAME" "$@"; }

cmd="${1:-start}"
case "$cmd" in
  start) PORT="${2:-0}"; WORKDIR="${3:-${TMPDIR:-/tmp}/imgpipe-barbican}" ;;
  stop | url) WORKDIR="${2:-${TMPDIR:-/tmp}/imgpipe-barbican}" ;;
  *) echo "usage: $0 start [PORT] [WORKDIR] | stop [WORKDIR] | url [WORKDIR]" >&2; exit 2 ;;
esac
PIDFILE="$WORKDIR/barbican.pid"

if [ "$cmd" = stop ]; then
  svc_stop_pidfile "$NAME" "$PIDFILE"
  exit 0
fi
if [ "$cmd" = url ]; then
  svc_alive "$(cat "$PIDFILE" 2>/dev/null || true)" && cat "$WORKDIR/barbican.url" && exit 0
  exit 1
fi

t0=$(date +%s)
WORKDIR="$(mkdir -p "$WORKDIR" && cd "$WORKDIR" && pwd)"
VENV="${IMGPIPE_BARBICAN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/imgpipe/barbican-venv}"
AUTH="${IMGPIPE_BARBICAN_AUTH:-noauth}"
PIP_SPEC="${IMGPIPE_BARBICAN_PIP_SPEC:-barbican==23.0.0 gunicorn==27.0.1}"
PY="${PYTHON:-python3}"

if [ -f "$PIDFILE" ] && svc_alive "$(cat "$PIDFILE")"; then
  log "already running, pid $(cat "$PIDFILE")"
  cat "$WORKDIR/barbican.url"
  exit 0
fi
rm -f "$PIDFILE"

# --- venv: created once, shared by concurrent callers, rebuilt when the spec changes.
svc_venv "$NAME" "$VENV" "$PIP_SPEC" "${IMGPIPE_BARBICAN_CONSTRAINTS:-}" gunicorn || exit 1

if [ "$PORT" = 0 ]; then
  PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || { log "bad port: $PORT"; exit 2; }
URL="http://127.0.0.1:$PORT"

# Barbican and its crypto plugins each parse the config from oslo.config's *default* search
# path (a --config-file shim misses [simple_crypto_plugin]), which includes
# ~/.barbican/barbican.conf: give the server its own HOME.
BHOME="$WORKDIR/home"
mkdir -p "$BHOME/.barbican" "$WORKDIR/log" "$WORKDIR/pylib"
cat >"$BHOME/.barbican/barbican.conf" <<CONF
[DEFAULT]
# secret_ref URLs are built from this
host_href = $URL
# create the schema at start-up (no barbican-manage step)
db_auto_create = True
log_file = $WORKDIR/log/barbican-api.log
[database]
connection = sqlite:///$WORKDIR/barbican.sqlite
[secretstore]
enabled_secretstore_plugins = store_crypto
[crypto]
enabled_crypto_plugins = simple_crypto
[simple_crypto_plugin]
# fixed 32-byte TEST key-encryption key (base64); without one every secret POST is a 500
kek = dGhpcnR5X3R3b19ieXRlX2tleWJsYWhibGFoYmxhaGg=
CONF

cat >"$WORKDIR/pylib/imgpipe_barbican_noauth.py" <<'PYEOF'
"""Test-only paste filter: a request without trusted identity headers runs as a fixed identity."""

IDENTITY = {
    "HTTP_X_IDENTITY_STATUS": "Confirmed",
    "HTTP_X_PROJECT_ID": "imgpipe-noauth",
    "HTTP_X_USER_ID": "imgpipe-noauth-user",
    "HTTP_X_ROLES": "admin,member,reader",
}


def filter_factory(global_conf, **local_conf):
    def wrap(app):
        def middleware(environ, start_response):
            if "HTTP_X_IDENTITY_STATUS" not in environ:
                environ.update(IDENTITY)
            return app(environ, start_response)

        return middleware

    return wrap
PYEOF

case "$AUTH" in
  noauth) V1="cors request_id http_proxy_to_wsgi noauth context microversion apiapp" ;;
  headerauth) V1="cors request_id http_proxy_to_wsgi context microversion apiapp" ;;
  *) log "IMGPIPE_BARBICAN_AUTH must be noauth or headerauth, not $AUTH"; exit 2 ;;
esac

cat >"$WORKDIR/barbican-api-paste.ini" <<INI
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/v1: barbican_v1

[pipeline:barbican_version]
pipeline = cors request_id http_proxy_to_wsgi microversion versionapp

[pipeline:barbican_v1]
pipeline = $V1

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:noauth]
paste.filter_factory = imgpipe_barbican_noauth:filter_factory

[filter:context]
paste.filter_factory = barbican.api.middleware.context:ContextMiddleware.factory

[filter:microversion]
paste.filter_factory = barbican.api.middleware.microversion:MicroversionMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = barbican

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
INI

echo "$URL" >"$WORKDIR/barbican.url"
# barbican.wsgi.api hard-codes /etc/barbican/barbican-api-paste.ini: use gunicorn --paste.
# --no-control-socket: gunicorn 27 otherwise shares ~/.gunicorn/gunicorn.ctl between instances.
# nohup execs, so $! is the gunicorn master's PID.
HOME="$BHOME" PYTHONPATH="$WORKDIR/pylib" nohup "$VENV/bin/gunicorn" --no-control-socket \
  --chdir "$WORKDIR" --bind "127.0.0.1:$PORT" --workers 1 --threads 4 --timeout 120 \
  --error-logfile "$WORKDIR/log/gunicorn.log" \
  --paste "$WORKDIR/barbican-api-paste.ini" >>"$WORKDIR/log/gunicorn.out" 2>&1 </dev/null &
echo $! >"$PIDFILE"

# The version document answers 300 Multiple Choices once the app is loaded.
if ! svc_wait_url "$NAME" "$URL/" "300" "$(cat "$PIDFILE")" "${IMGPIPE_BARBICAN_WAIT_S:-60}" \
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
log "up at $URL (auth=$AUTH, pid $(cat "$PIDFILE")) after $(( $(date +%s) - t0 ))s"
echo "$URL"
