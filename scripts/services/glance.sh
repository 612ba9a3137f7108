#!/usr/bin/env bash
# Start / stop a real OpenStack Glance Images API v2 from PyPI on 127.0.0.1, for tests.
# sqlite database, "file" store, served by gunicorn (glance 33 has no standalone server).
#
#   glance.sh start [PORT] [WORKDIR]  -> prints the base URL (http://127.0.0.1:PORT) as the
#                                        last line of stdout; logs go to stderr.
#                                        PORT omitted or 0: a free port is chosen.
#   glance.sh stop  [WORKDIR]         -> stops the server by the PID in WORKDIR/glance.pid
#   glance.sh url   [WORKDIR]         -> prints the URL if the server is alive, else exits 1
#
# WORKDIR (default ${TMPDIR:-/tmp}/imgpipe-glance) holds all state: config, sqlite DB, the
# file store (WORKDIR/images/<image id>), logs, PID file. The venv is cached across runs
# (installing takes ~40-50 s, a start in a fresh WORKDIR ~10 s: db_sync + server start):
#
#   IMGPIPE_GLANCE_VENV      venv to create/reuse
#                            (default ${XDG_CACHE_HOME:-$HOME/.cache}/imgpipe/glance-venv)
#   IMGPIPE_GLANCE_AUTH      noauth (default) | headerauth
#      noauth:     every request is admin (no headers needed, X-Auth-Token ignored), images get
#                  owner null. Glance's unauthenticated context has no roles and no project, so
#                  the secure-RBAC default policies would answer 403: policy.yaml makes
#                  "context_is_admin" always true.
#      headerauth: identity from keystonemiddleware's trusted headers (X-Identity-Status:
#                  Confirmed, X-Roles, X-Project-Id, X-User-Id); without them 401.
#   IMGPIPE_GLANCE_PIP_SPEC  default "glance==33.0.0 gunicorn==27.0.1"
#   IMGPIPE_GLANCE_CONSTRAINTS  optional pip constraints file for the install
#   IMGPIPE_GLANCE_WAIT_S    seconds to wait for the API to answer (default 90)
#   IMGPIPE_GLANCE_BARBICAN_URL + IMGPIPE_GLANCE_KEYSTONE_URL  optional: let Glance verify
#                            img_signature* itself on upload (castellan -> keystone -> barbican).
#                            Without them, upload data first and PATCH the img_signature*
#                            properties onto the active image (Glance then verifies nothing).
#   IMGPIPE_SERVICE_OWNER_PID  optional: a watchdog stops the server when this PID exits
#                            (tests pass their own PID so a killed test leaks nothing)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$HERE/common.sh"
NAME=glance
log() { svc_log "$NAME" "$@"; }

cmd="${1:-start}"
case "$cmd" in
  start) PORT="${2:-0}"; WORKDIR="${3:-${TMPDIR:-/tmp}/imgpipe-glance}" ;;
  stop | url) WORKDIR="${2:-${TMPDIR:-/tmp}/imgpipe-glance}" ;;
  *) echo "usage: $0 start [PORT] [WORKDIR] | stop [WORKDIR] | url [WORKDIR]" >&2; exit 2 ;;
esac
PIDFILE="$WORKDIR/glance.pid"

if [ "$cmd" = stop ]; then
  svc_stop_pidfile "$NAME" "$PIDFILE"
  exit 0
fi
if [ "$cmd" = url ]; then
  svc_alive "$(cat "$PIDFILE" 2>/dev/null || true)" && cat "$WORKDIR/glance.url" && exit 0
  exit 1
fi

t0=$(date +%s)
WORKDIR="$(mkdir -p "$WORKDIR" && cd "$WORKDIR" && pwd)"
VENV="${IMGPIPE_GLANCE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/imgpipe/glance-venv}"
AUTH="${IMGPIPE_GLANCE_AUTH:-noauth}"
PIP_SPEC="${IMGPIPE_GLANCE_PIP_SPEC:-glance==33.0.0 gunicorn==27.0.1}"
PY="${PYTHON:-python3}"

if [ -f "$PIDFILE" ] && svc_alive "$(cat "$PIDFILE")"; then
  log "already running, pid $(cat "$PIDFILE")"
  cat "$WORKDIR/glance.url"
  exit 0
fi
rm -f "$PIDFILE"

# --- venv: created once, shared by concurrent callers, rebuilt when the spec changes.
svc_venv "$NAME" "$VENV" "$PIP_SPEC" "${IMGPIPE_GLANCE_CONSTRAINTS:-}" gunicorn glance-manage || exit 1

if [ "$PORT" = 0 ]; then
  PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || { log "bad port: $PORT"; exit 2; }
URL="http://127.0.0.1:$PORT"

case "$AUTH" in
  noauth) FLAVOR="" ;;
  headerauth) FLAVOR="headerauth" ;;
  *) log "IMGPIPE_GLANCE_AUTH must be noauth or headerauth, not $AUTH"; exit 2 ;;
esac

ETC="$WORKDIR/etc"
mkdir -p "$ETC" "$WORKDIR/images" "$WORKDIR/staging" "$WORKDIR/tasks" "$WORKDIR/log"
cat >"$ETC/glance-api.conf" <<CONF
[DEFAULT]
enabled_backends = fs:file
log_file = $WORKDIR/log/glance-api.log
debug = false
[database]
connection = sqlite:///$WORKDIR/glance.sqlite
[paste_deploy]
flavor = $FLAVOR
config_file = $ETC/glance-api-paste.ini
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $WORKDIR/images
[os_glance_staging_store]
filesystem_store_datadir = $WORKDIR/staging
[os_glance_tasks_store]
filesystem_store_datadir = $WORKDIR/tasks
[oslo_policy]
policy_file = $ETC/policy.yaml
CONF
if [ -n "${IMGPIPE_GLANCE_BARBICAN_URL:-}" ]; then
  cat >>"$ETC/glance-api.conf" <<CONF
[key_manager]
backend = barbican
[barbican]
barbican_endpoint = $IMGPIPE_GLANCE_BARBICAN_URL
auth_endpoint = ${IMGPIPE_GLANCE_KEYSTONE_URL:?IMGPIPE_GLANCE_KEYSTONE_URL is needed with IMGPIPE_GLANCE_BARBICAN_URL}
CONF
fi

if [ "$AUTH" = noauth ]; then
  printf '"context_is_admin": ""\n' >"$ETC/policy.yaml"
else
  printf '{}\n' >"$ETC/policy.yaml"
fi

cat >"$ETC/glance-api-paste.ini" <<'INI'
# noauth: flavor empty -> composite glance-api -> pipeline "default"
[composite:glance-api]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

# headerauth: the keystone pipeline without authtoken (trusts X-Identity-Status etc.)
[composite:glance-api-headerauth]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
default = cors http_proxy_to_wsgi versionnegotiation osprofiler unauthenticated-context rootapp
headerauth = cors http_proxy_to_wsgi versionnegotiation osprofiler context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = /nonexistent/glance-healthcheck-disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:unauthenticated-context]
paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:osprofiler]
paste.filter_factory = osprofiler.web:WsgiMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
INI

if [ ! -f "$WORKDIR/glance.sqlite" ]; then
  "$VENV/bin/glance-manage" --config-file "$ETC/glance-api.conf" db_sync \
    >"$WORKDIR/log/db_sync.log" 2>&1 ||
    { log "db_sync failed"; tail -20 "$WORKDIR/log/db_sync.log" >&2; exit 1; }
fi

echo "$URL" >"$WORKDIR/glance.url"
# --no-control-socket: gunicorn 27 otherwise shares ~/.gunicorn/gunicorn.ctl between instances.
# nohup execs, so $! is the gunicorn master's PID.
OS_GLANCE_CONFIG_DIR="$ETC" nohup "$VENV/bin/gunicorn" --no-control-socket \
  --chdir "$WORKDIR" --bind "127.0.0.1:$PORT" --workers 1 --threads 8 --timeout 600 \
  --error-logfile "$WORKDIR/log/gunicorn.log" \
  glance.wsgi.api:application >>"$WORKDIR/log/gunicorn.out" 2>&1 </dev/null &
echo $! >"$PIDFILE"

# noauth answers the schema with 200; headerauth without identity headers with 401.
if ! svc_wait_url "$NAME" "$URL/v2/schemas/image" "200 401" "$(cat "$PIDFILE")" \
  "${IMGPIPE_GLANCE_WAIT_S:-90}" "$WORKDIR/log/gunicorn.log"; then
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
