# shellcheck shell=bash
# Shared helpers for the scripts in scripts/services/ (source this file; it defines functions only).
#
# These scripts start real third-party services (OpenStack Barbican, …) on 127.0.0.1 for tests.
# Processes are tracked by PID file and stopped by PID, never by name.

# svc_log NAME MESSAGE… : a log line on stderr (stdout is reserved for the service URL).
svc_log() {
  local name="$1"
  shift
  echo "[$name] $*" >&2
}

# svc_alive PID : true if PID names a live process. A zombie (state Z) counts as dead: on hosts
# whose PID 1 does not reap orphans a killed server lingers as a zombie and `kill -0` still
# succeeds on it.
svc_alive() {
  local pid="${1:-}"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/stat" ] || return 1
  ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$pid/stat" 2>/dev/null
}

# svc_http_status URL : print the HTTP status code of a GET (000 when nothing answered).
# Every attempt is bounded by a 2 s timeout, so a hung server cannot stall a wait loop.
svc_http_status() {
  python3 - "$1" <<'PYEOF' 2>/dev/null || echo 000
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PYEOF
}

# svc_wait_url NAME URL CODES PID TIMEOUT_S LOGFILE : poll URL until its status is one of the
# space-separated CODES. Fails (after printing the log tail) if PID dies or TIMEOUT_S passes.
svc_wait_url() {
  local name="$1" url="$2" codes="$3" pid="$4" timeout="$5" logfile="$6"
  local deadline=$(( $(date +%s) + timeout )) code
  while :; do
    code="$(svc_http_status "$url")"
    case " $codes " in *" $code "*) return 0 ;; esac
    if ! svc_alive "$pid"; then
      svc_log "$name" "process $pid died before answering on $url"
      [ -f "$logfile" ] && tail -30 "$logfile" >&2
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      svc_log "$name" "no answer (last status $code) on $url within ${timeout}s"
      [ -f "$logfile" ] && tail -30 "$logfile" >&2
      return 1
    fi
    sleep 0.2
  done
}

# svc_stop_pidfile NAME PIDFILE : TERM the PID in PIDFILE, wait up to 10 s, then KILL; remove
# the file. Does nothing when the file is missing or the process is already gone.
svc_stop_pidfile() {
  local name="$1" pidfile="$2" pid
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if svc_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do svc_alive "$pid" || break; sleep 0.1; done
    if svc_alive "$pid"; then
      svc_log "$name" "pid $pid ignored TERM for 10 s; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    svc_log "$name" "stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

# svc_watchdog NAME PIDFILE OWNER_PID LOGFILE : in the background, stop the server in PIDFILE
# once OWNER_PID (e.g. a test process) exits, so a killed test does not leak the server. The
# watchdog exits by itself when the server stops first. Its output goes to LOGFILE only (it must
# not hold the caller's stdout open).
svc_watchdog() {
  local name="$1" pidfile="$2" owner="$3" logfile="$4" server
  server="$(cat "$pidfile")"
  svc_alive "$owner" || { svc_log "$name" "owner pid $owner is not alive"; return 1; }
  (
    trap '' HUP
    while svc_alive "$owner" && svc_alive "$server"; do sleep 1; done
    if svc_alive "$server" && [ "$(cat "$pidfile" 2>/dev/null || true)" = "$server" ]; then
      svc_log "$name" "owner pid $owner exited; stopping pid $server"
      svc_stop_pidfile "$name" "$pidfile"
    fi
  ) </dev/null >>"$logfile" 2>&1 &
  disown
}

# svc_venv NAME VENV PIP_SPEC CONSTRAINTS [EXE…] : create, or reuse, the Python venv VENV with
# PIP_SPEC installed (with the pip constraints file CONSTRAINTS unless it is empty). Concurrent
# callers serialise on VENV.lock. The venv is rebuilt when PIP_SPEC or CONSTRAINTS differ from
# the ones it was built with, or when one of the EXEs is missing from VENV/bin. Installs go to
# stderr. Uses $PYTHON (default python3). Returns non-zero (after a log line) on failure.
svc_venv() {
  local name="$1" venv="$2" spec="$3" constraints="$4"
  shift 4
  local py="${PYTHON:-python3}" stamp="$venv/.imgpipe-pip-spec" want ok=1 rc=0 t0 exe lockfd
  want="$spec $constraints"
  t0=$(date +%s)
  mkdir -p "$(dirname "$venv")" || return 1
  exec {lockfd}>"$venv.lock" || return 1
  flock "$lockfd"
  for exe in "$@"; do [ -x "$venv/bin/$exe" ] || ok=0; done
  [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] || ok=0
  if [ "$ok" = 0 ]; then
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
      svc_log "$name" "python3 cannot create venvs: install python3-venv"
      rc=1
    else
      svc_log "$name" "pip install $spec into $venv"
      # shellcheck disable=SC2086 # PIP_SPEC is a list of requirements
      { rm -rf "$venv" &&
        "$py" -m venv "$venv" &&
        "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2 &&
        "$venv/bin/pip" install -q --disable-pip-version-check \
          ${constraints:+-c "$constraints"} $spec >&2 &&
        echo "$want" >"$stamp"; } || rc=1
      if [ "$rc" = 0 ]; then
        svc_log "$name" "venv ready after $(( $(date +%s) - t0 ))s"
      else
        svc_log "$name" "creating the venv $venv failed"
      fi
    fi
  fi
  flock -u "$lockfd"
  exec {lockfd}>&-
  return "$rc"
}
