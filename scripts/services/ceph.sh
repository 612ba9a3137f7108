#!/usr/bin/env bash
# Install / start / stop a throw-away single-node Ceph (Debian 12's pacific 16.2) on 127.0.0.1,
# for the RBD sink tests: 1 mon + 1 OSD (bluestore on a sparse file by default) + one RBD pool,
# without systemd and without ceph-volume. Daemons are tracked by PID and stopped by PID only.
#
#   ceph.sh install              apt-get install the daemons, the CLI and librbd-dev/librados-dev
#                                (~50 s on a fresh Debian 12; a no-op when already installed)
#   ceph.sh start [CEPH_DIR]     wipe CEPH_DIR, start the cluster; the last line of stdout is the
#                                path of its ceph.conf (logs go to stderr)
#   ceph.sh stop  [CEPH_DIR]     SIGTERM the daemons by their saved PIDs (reverse start order)
#   ceph.sh conf  [CEPH_DIR]     print the ceph.conf path if every daemon is alive, else exit 1
#
# CEPH_DIR defaults to ${TMPDIR:-/tmp}/imgpipe-ceph. Environment knobs:
#   IMGPIPE_CEPH_OBJSTORE   bluestore (default: sparse file, ~150 MB OSD RSS) | memstore (data in
#                           OSD RAM, a few seconds faster to start; fine for small tests)
#   IMGPIPE_CEPH_STORE_GB   size of the bluestore file / memstore device (default 12)
#   IMGPIPE_CEPH_POOL       RBD pool name (default rbd)
#   IMGPIPE_CEPH_MON_PORT   v1 mon port (default 6789)
#   IMGPIPE_CEPH_MON_V2_PORT  v2 mon port (default 3300)
#   IMGPIPE_CEPH_WITH_MGR   1 = also run ceph-mgr (default 0). RBD I/O does not need it; without
#                           it `ceph health` turns HEALTH_ERR (MGR_DOWN) after ~120 s, harmlessly.
#   IMGPIPE_CEPH_WAIT_S     overall readiness deadline in seconds (default 120)
#   IMGPIPE_SERVICE_OWNER_PID  a watchdog stops the cluster when this PID exits (tests pass their
#                           own PID, so a killed test leaks no daemon)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$HERE/common.sh"
NAME=ceph
log() { svc_log "$NAME" "$@"; }

cmd="${1:-start}"
CEPH_DIR="${2:-${TMPDIR:-/tmp}/imgpipe-ceph}"
OBJSTORE="${IMGPIPE_CEPH_OBJSTORE:-bluestore}"
STORE_GB="${IMGPIPE_CEPH_STORE_GB:-12}"
POOL="${IMGPIPE_CEPH_POOL:-rbd}"
MON_PORT="${IMGPIPE_CEPH_MON_PORT:-6789}"
MON_V2_PORT="${IMGPIPE_CEPH_MON_V2_PORT:-3300}"
WITH_MGR="${IMGPIPE_CEPH_WITH_MGR:-0}"
WAIT_S="${IMGPIPE_CEPH_WAIT_S:-120}"
CONF="$CEPH_DIR/ceph.conf"
PIDS="$CEPH_DIR/pids" # one "name pid" line per daemon, in start order

PACKAGES=(ceph-mon ceph-osd ceph-common librbd-dev librados-dev uuid-runtime)

# Stop every daemon listed in $PIDS, newest first: TERM, up to 15 s, then KILL.
stop_cluster() {
  [ -f "$PIDS" ] || return 0
  local name pid
  tac "$PIDS" | while read -r name pid; do
    svc_alive "$pid" || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do svc_alive "$pid" || break; sleep 0.1; done
    if svc_alive "$pid"; then
      log "$name (pid $pid) ignored TERM for 15 s; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  done
  rm -f "$PIDS"
}

all_alive() {
  [ -s "$PIDS" ] || return 1
  local name pid
  while read -r name pid; do svc_alive "$pid" || return 1; done <"$PIDS"
}

case "$cmd" in
  install)
    missing=()
    for p in "${PACKAGES[@]}" $([ "$WITH_MGR" = 1 ] && echo ceph-mgr); do
      dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then log "already installed"; exit 0; fi
    [ "$(id -u)" = 0 ] || { log "need root to install: ${missing[*]}"; exit 1; }
    t0=$(date +%s)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "installed ${missing[*]} in $(( $(date +%s) - t0 ))s"
    exit 0
    ;;
  stop) stop_cluster; exit 0 ;;
  conf) all_alive && echo "$CONF" && exit 0; exit 1 ;;
  start) ;;
  *) echo "usage: $0 install | start [CEPH_DIR] | stop [CEPH_DIR] | conf [CEPH_DIR]" >&2; exit 2 ;;
esac

for tool in ceph-mon ceph-osd ceph rbd monmaptool ceph-authtool uuidgen; do
  command -v "$tool" >/dev/null || { log "$tool not found: run '$0 install' first"; exit 1; }
done
for port in "$MON_PORT" "$MON_V2_PORT"; do
  [[ "$port" =~ ^[0-9]+$ ]] || { log "bad port: $port"; exit 2; }
done

T0=$(date +%s%N)
ts() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); log "[$((ms / 1000)).$(printf %03d $((ms % 1000)))s] $*"; }

# A previous cluster in this dir: stop it (by its PIDs) before wiping.
stop_cluster
rm -rf "$CEPH_DIR"
mkdir -p "$CEPH_DIR"/{mon/ceph-a,osd,mgr/ceph-x,log,run}
CEPH_DIR="$(cd "$CEPH_DIR" && pwd)"
CONF="$CEPH_DIR/ceph.conf"
PIDS="$CEPH_DIR/pids"
: >"$PIDS"
# Any failure below: do not leave half a cluster running.
trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed (rc=$rc), stopping what was started"; stop_cluster; fi' EXIT

FSID=$(uuidgen)
OSD_UUID=$(uuidgen)
MON_ADDR="[v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_PORT]"
STORE_BYTES=$((STORE_GB * 1024 * 1024 * 1024))

cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon_initial_members = a
mon_host = $MON_ADDR
# else the OSD may advertise a non-loopback address
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
keyring = $CEPH_DIR/keyring
run_dir = $CEPH_DIR/run
admin_socket = $CEPH_DIR/run/\$name.asok
log_file = $CEPH_DIR/log/\$name.log
pid_file = $CEPH_DIR/run/\$name.pid
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
mon_osd_min_down_reporters = 1

[client]
# fail fast instead of hanging 300 s when the cluster is down
client_mount_timeout = 30
rados_mon_op_timeout = 30
rados_osd_op_timeout = 60

[mon]
mon_data = $CEPH_DIR/mon/\$cluster-\$id
mon_allow_pool_delete = true
mon_osd_reporter_subtree_level = osd
# A throw-away test cluster on a shared build machine: the host disk may be > 95 % full (the
# default critical level makes mon.a exit at start); the store is a sparse file we size ourselves.
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# faster map commits: pool create / rbd pool init return in ~1 s instead of ~5 s
paxos_propose_interval = 0.1

[mgr]
mgr_data = $CEPH_DIR/mgr/\$cluster-\$id
mgr_initial_modules = ""

[osd]
osd_data = $CEPH_DIR/osd/\$cluster-\$id
osd_objectstore = $OBJSTORE
memstore_device_bytes = $STORE_BYTES
memstore_page_set = false
# bluestore_block_path stays unset: it defaults to <osd_data>/block (a sparse file of
# bluestore_block_size); setting it to that same path makes mkfs loop on a symlink (ELOOP).
bluestore_block_create = true
bluestore_block_size = $STORE_BYTES
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = 1073741824
osd_memory_base = 268435456
osd_memory_cache_min = 134217728
osd_class_update_on_start = false
osd_crush_update_on_start = true
EOF

# Every ceph CLI call is bounded: the CLI otherwise retries a dead mon for 300 s.
CEPH=(timeout 60 ceph -c "$CONF" --connect-timeout 20)
QCEPH=(timeout 5 ceph -c "$CONF" --connect-timeout 3)
RBD=(timeout 30 rbd -c "$CONF")

# The keyring holds mon. and client.admin keys; mon --mkfs needs it even with auth none.
ceph-authtool --create-keyring "$CEPH_DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$CEPH_DIR/keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
monmaptool --create --fsid "$FSID" --addv a "$MON_ADDR" "$CEPH_DIR/monmap" >/dev/null
ceph-mon -c "$CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/keyring"

# -f keeps the daemon in the foreground, so $! is its real PID; setsid detaches it from the
# caller's session and terminal.
start_daemon() { # name cmd...
  local name=$1
  shift
  setsid "$@" -f </dev/null >>"$CEPH_DIR/log/$name.stdout" 2>&1 &
  echo "$name $!" >>"$PIDS"
}
# Fail fast when a daemon died (port in use, bad config, ...).
check_alive() {
  local name pid
  while read -r name pid; do
    svc_alive "$pid" && continue
    log "daemon $name (pid $pid) died; last log lines:"
    tail -15 "$CEPH_DIR/log/$name.log" >&2 2>/dev/null || true
    tail -5 "$CEPH_DIR/log/$name.stdout" >&2 2>/dev/null || true
    exit 1
  done <"$PIDS"
}
DEADLINE=$(( $(date +%s) + WAIT_S ))
wait_for() { # what cmd...
  local what=$1
  shift
  until "$@" >/dev/null 2>&1; do
    check_alive
    [ "$(date +%s)" -lt "$DEADLINE" ] || { log "timed out after ${WAIT_S}s waiting for: $what"; exit 1; }
    sleep 0.2
  done
}

start_daemon mon.a ceph-mon -c "$CONF" -i a
wait_for "mon quorum" "${QCEPH[@]}" -s
ts "mon up (pid $(awk '$1=="mon.a"{print $2}' "$PIDS"))"

if [ "$WITH_MGR" = 1 ]; then
  start_daemon mgr.x ceph-mgr -c "$CONF" -i x
  ts "mgr started"
fi

OSD_ID=$("${CEPH[@]}" osd new "$OSD_UUID")
OSD_DATA="$CEPH_DIR/osd/ceph-$OSD_ID"
mkdir -p "$OSD_DATA"
# The uuid must be the one registered by `osd new`.
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" --keyring "$OSD_DATA/keyring" \
  >>"$CEPH_DIR/log/osd-mkfs.log" 2>&1 || { tail -30 "$CEPH_DIR/log/osd-mkfs.log" >&2; exit 1; }
ts "osd mkfs ($OBJSTORE, ${STORE_GB} GiB) done"
start_daemon "osd.$OSD_ID" ceph-osd -c "$CONF" -i "$OSD_ID" --keyring "$OSD_DATA/keyring"

osd_is_up() {
  "${QCEPH[@]}" osd stat -f json 2>/dev/null |
    python3 -c 'import sys,json; sys.exit(json.load(sys.stdin)["num_up_osds"] != 1)'
}
wait_for "osd up" osd_is_up
ts "osd up"

"${CEPH[@]}" osd pool create "$POOL" 8 8 replicated >/dev/null 2>&1
"${CEPH[@]}" osd pool set "$POOL" size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
"${RBD[@]}" pool init "$POOL"
ts "pool $POOL created"

# Ready = an image of RANDOM bytes round-trips (rbd import skips zero blocks, so a zero probe
# would prove nothing).
rbd_probe() {
  local r="$CEPH_DIR/run/probe.bin"
  head -c 1048576 /dev/urandom >"$r"
  "${RBD[@]}" rm --no-progress "$POOL/.ready-probe" >/dev/null 2>&1 || true
  "${RBD[@]}" import --no-progress - "$POOL/.ready-probe" <"$r" &&
    "${RBD[@]}" export --no-progress "$POOL/.ready-probe" - | cmp -s - "$r" &&
    "${RBD[@]}" rm --no-progress "$POOL/.ready-probe"
}
wait_for "RBD write+read probe" rbd_probe
ts "RBD pool $POOL accepts writes"

if [ -n "${IMGPIPE_SERVICE_OWNER_PID:-}" ]; then
  owner="$IMGPIPE_SERVICE_OWNER_PID"
  svc_alive "$owner" || { log "owner pid $owner is not alive"; exit 1; }
  # Stop the cluster once the owner exits (or exit when the cluster is stopped first).
  (
    trap '' HUP
    while svc_alive "$owner" && all_alive; do sleep 1; done
    if svc_alive "$owner"; then exit 0; fi
    log "owner pid $owner exited; stopping the cluster"
    stop_cluster
  ) </dev/null >>"$CEPH_DIR/log/watchdog.log" 2>&1 &
  disown
fi
trap - EXIT
log "up: $(tr '\n' ' ' <"$PIDS")"
echo "$CONF"
