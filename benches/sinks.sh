#!/usr/bin/env bash
# Disk-sink throughput in one run (issue 8): the block sink on a loop device against
# `dd oflag=direct` of the same bytes, and the RBD sink against `rbd import` of the same raw
# image, alternating the contenders, medians of RUNS.
#
#   benches/sinks.sh [SIZE_MIB=1024] [RUNS=3] [DIR=/var/tmp/imgpipe-sinks]
#
# Environment:
#   IMGPIPE_BENCH_VARIANTS  "dense sparse" (default) — dense: every byte random; sparse: the same
#                           random data with every 4th 16 MiB region a hole (25 % zeros).
#   IMGPIPE_BENCH_SINKS     "block rbd" (default), or one of them.
#   IMGPIPE_BENCH_DEPTHS    block sink settings to compare, e.g. "0 2 4/0 4/256": writes in flight
#                           (IMGPIPE_BLOCK_WRITES_IN_FLIGHT; 0 = synchronous pwrite), optionally
#                           "/MiB" between background syncs (IMGPIPE_BLOCK_SYNC_EVERY_MIB; 0 = none).
#                           Default "default": the built-in settings.
#   IMGPIPE_BENCH_FIO       1 = also time fio on the loop device (same bytes: bs=4M, O_DIRECT,
#                           end_fsync) with psync and io_uring at iodepth 4, as device references.
#   IMGPIPE_BENCH_RBD_ARGS  extra RBD sink contenders, '|'-separated CEPH_ARGS values (librbd options
#                           applied after ceph.conf), e.g. "--rbd_cache=true|--rbd_disable_zero_copy_writes=true".
#   IMGPIPE_BENCH_PIN       "split": pin the Ceph daemons (every thread) to CPU 1 and every RBD
#                           contender (rbd import and imgpipe alike) to CPU 0, so the cluster's
#                           CPU no longer depends on how much the client uses — the nearest this
#                           2-core machine gets to an OSD on another host. Default: unpinned.
#   IMGPIPE_BENCH_LOCK      lock file taken for the measurements (default DIR/bench.lock; point
#                           every bench on a shared machine at one file); the build runs first.
#   CARGO_TARGET_DIR        where the release binary is built (default: the workspace's target/).
#
# What each contender does (page cache warmed with `cat IMG >/dev/null` before every one):
#   dd          dd if=IMG of=/dev/loopN bs=4M oflag=direct            (no sync at the end)
#   dd+fsync    the same with conv=fsync                               (durable, as the sink is)
#   imgpipe     imgpipe run: read IMG in 1 MiB chunks on the reader thread; format inspector
#               (raw, provisional + final verdict); raw decoder with 4 KiB zero detection; size
#               check and BLAKE3 digest ([verify] blake3 + size: the lightest verified run; with no
#               digest at all imgpipe would still compute sha256 for the report); block sink (first MiB
#               zeroed + fdatasync in begin, O_DIRECT 4 MiB writes with 4 in flight on writer
#               threads, zero runs as BLKZEROOUT,
#               fdatasync, first MiB written last, fdatasync).
#   rbd import  rbd -c CONF import IMG rbd/NAME (image format 2, 4 MiB objects, its own
#               sparse detection: all-zero blocks are not written)
#   imgpipe     imgpipe run as above into [sink] rbd = {...}: temporary image, librbd
#               rbd_aio_writev over the chunks' own buffers (one write per 4 MiB object, 12 in
#               flight, zero-copy: rbd_disable_zero_copy_writes=false, rbd_cache=false), zero runs
#               skipped, flush, close, rename. IMGPIPE_RBD_WRITES_IN_FLIGHT=N changes the depth.
# Between contenders the loop device is discarded (`blkdiscard`: holes punched in its sparse
# backing file, so every writer allocates afresh) and RBD images are removed.
#
# Needs root (losetup), the Ceph packages (scripts/services/ceph.sh install) for the RBD part.
# Everything started here (loop device, Ceph daemons) is stopped by this script on exit.
set -euo pipefail
SIZE_MIB="${1:-1024}"; RUNS="${2:-3}"; DIR="${3:-/var/tmp/imgpipe-sinks}"
VARIANTS="${IMGPIPE_BENCH_VARIANTS:-dense sparse}"
SINKS="${IMGPIPE_BENCH_SINKS:-block rbd}"
DEPTHS="${IMGPIPE_BENCH_DEPTHS:-default}"
FIO="${IMGPIPE_BENCH_FIO:-0}"
RBD_ARGS="${IMGPIPE_BENCH_RBD_ARGS:-}"
PIN="${IMGPIPE_BENCH_PIN:-}"
case "$PIN" in "" | split) ;; *) echo "IMGPIPE_BENCH_PIN must be empty or \"split\"" >&2; exit 2 ;; esac
CLIENT=()
RBD_VARIANTS=(import imgpipe)
if [ -n "$RBD_ARGS" ]; then
  IFS='|' read -r -a extra <<<"$RBD_ARGS"
  for i in "${!extra[@]}"; do RBD_VARIANTS+=("imgpipe$((i + 1))"); done
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
bin="$target/release/imgpipe"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
bytes=$((SIZE_MIB << 20))
lock="${IMGPIPE_BENCH_LOCK:-$DIR/bench.lock}"

features=()
case " $SINKS " in *" rbd "*) features=(--features rbd) ;; esac
echo "building $bin ${features[*]}" >&2
(cd "$repo" && cargo build --release -q -p imgpipe-cli "${features[@]}")

# --- images ----------------------------------------------------------------------------------
make_dense() { # path
  # openssl dies of SIGPIPE when head has enough: not an error.
  { openssl enc -aes-128-ctr -pass pass:imgpipe-sinks -nosalt -pbkdf2 -in /dev/zero 2>/dev/null || true; } \
    | head -c "$bytes" >"$1.tmp"
  [ "$(stat -c %s "$1.tmp")" = "$bytes" ] || { echo "could not prepare $1" >&2; exit 1; }
  mv "$1.tmp" "$1"
}
make_sparse() { # path: dense copy with every 4th 16 MiB region punched out (reads zeros)
  cp --sparse=always "$DIR/dense.raw" "$1.tmp"
  local off
  for ((off = 48 << 20; off < bytes; off += 64 << 20)); do
    fallocate --punch-hole --offset "$off" --length $((16 << 20)) "$1.tmp"
  done
  mv "$1.tmp" "$1"
}
for v in dense $VARIANTS; do
  img="$DIR/$v.raw"
  if [ ! -f "$img" ] || [ "$(stat -c %s "$img")" != "$bytes" ]; then
    echo "preparing $img" >&2
    "make_$v" "$img"
  fi
done

# The lightest verified run: BLAKE3 (~0.2 ns/B on its own thread here) + size. The expected
# digest comes from `imgpipe hash`; the first round also compares the written disk with cmp.
declare -A B3
for v in $VARIANTS; do B3[$v]=$("$bin" hash --algo blake3 "$DIR/$v.raw" | awk '{print $2}'); done

# --- services (torn down on any exit) ---------------------------------------------------------
LOOP=""; CEPH_STARTED=""
cleanup() {
  set +e
  [ -n "$LOOP" ] && losetup -d "$LOOP" && echo "detached $LOOP" >&2
  rm -f "$DIR/loop.img"
  [ -n "$CEPH_STARTED" ] && "$repo/scripts/services/ceph.sh" stop "$DIR/ceph"
  rm -rf "$DIR/ceph"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wall seconds and CPU seconds (user+sys of the child and its children) of a command.
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
dt = time.monotonic() - t
u = resource.getrusage(resource.RUSAGE_CHILDREN)
if r.returncode != 0:
    sys.exit(f"command failed ({r.returncode}): {sys.argv[1:]}\n{r.stderr.decode(errors='replace')}")
print(f"{dt:.3f} {u.ru_utime + u.ru_stime:.3f}")
PY
}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

# Take the benchmark lock for everything that is timed (builds above may overlap others').
exec 9>>"$lock"
echo "waiting for $lock" >&2
flock 9
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

case " $SINKS " in *" block "*)
  truncate -s 0 "$DIR/loop.img"
  truncate -s $((bytes + (64 << 20))) "$DIR/loop.img"
  LOOP=$(losetup --find --show --direct-io=on "$DIR/loop.img")
  echo "loop device $LOOP (direct-io=$(cat /sys/block/"${LOOP#/dev/}"/loop/dio))" >&2
  ;;
esac
case " $SINKS " in *" rbd "*)
  # The mon refuses to start when its filesystem has < 5 % free (a shared build machine's big
  # disk can be there with many GiB left): lower that threshold for this throw-away cluster.
  conf=$(CEPH_ARGS="--mon_data_avail_crit=1" IMGPIPE_SERVICE_OWNER_PID=$$ \
    "$repo/scripts/services/ceph.sh" start "$DIR/ceph" | tail -1)
  CEPH_STARTED=1
  RBD=(rbd -c "$conf")
  if [ "$PIN" = split ]; then
    while read -r name pid; do
      taskset -a -p -c 1 "$pid" >/dev/null
      echo "pinned $name (pid $pid, all threads) to CPU 1" >&2
    done <"$DIR/ceph/pids"
    CLIENT=(taskset -c 0)
  fi
  ;;
esac

# Key and environment of a block sink setting ("default", "D" or "D/S").
block_key() { # variant setting
  local k="block-$1-imgpipe"
  [ "$2" = default ] && { echo "$k"; return; }
  k+="-qd${2%%/*}"; [[ "$2" == */* ]] && k+="-sync${2#*/}"
  echo "$k"
}
block_env() { # setting
  echo "-u IMGPIPE_BLOCK_WRITES_IN_FLIGHT -u IMGPIPE_BLOCK_SYNC_EVERY_MIB"
  [ "$1" = default ] && return
  echo "IMGPIPE_BLOCK_WRITES_IN_FLIGHT=${1%%/*}"
  [[ "$1" == */* ]] && echo "IMGPIPE_BLOCK_SYNC_EVERY_MIB=${1#*/}"
  return 0
}
declare -A T C
timeit() { # key cmd... : run, record wall and CPU seconds under key (a failure stops the script)
  local key=$1 out w c
  shift
  out=$(measure "$@")
  read -r w c <<<"$out"
  T[$key]+="$w "; C[$key]+="$c "
}
run_block() { # variant round
  local v=$1 r=$2 img="$DIR/$1.raw" order
  cat >"$DIR/block.toml" <<SPEC
[source]
path = "$img"
[verify]
blake3 = "${B3[$v]}"
size = $bytes
[sink]
device = "$LOOP"
SPEC
  local order="dd" d
  for d in $DEPTHS; do order+=" imgpipe:$d"; done
  order+=" ddsync"
  [ "$FIO" = 1 ] && order+=" fio:psync fio:io_uring"
  # Reverse the order every other round, so drift and cache effects do not favour one side.
  [ $((r % 2)) = 1 ] && order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
  for who in $order; do
    blkdiscard "$LOOP"
    cat "$img" >/dev/null
    case $who in
      dd) timeit "block-$v-dd" dd if="$img" of="$LOOP" bs=4M oflag=direct ;;
      ddsync) timeit "block-$v-ddsync" dd if="$img" of="$LOOP" bs=4M oflag=direct conv=fsync ;;
      imgpipe:*)
        d=${who#imgpipe:}
        timeit "$(block_key "$v" "$d")" env $(block_env "$d") "$bin" run --progress never "$DIR/block.toml"
        if [ "$r" = 1 ]; then cmp -n "$bytes" "$img" "$LOOP" || { echo "block sink: device differs from $img" >&2; exit 1; }; fi
        ;;
      fio:*)
        timeit "block-$v-fio-${who#fio:}" fio --name=w --filename="$LOOP" --rw=write --bs=4M --direct=1 \
          --size="$bytes" --end_fsync=1 --ioengine="${who#fio:}" --iodepth=4 --output=/dev/null
        ;;
    esac
  done
}
run_rbd() { # variant round
  local v=$1 r=$2 img="$DIR/$1.raw" order name
  order="${RBD_VARIANTS[*]}"
  [ $((r % 2)) = 1 ] && order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
  for who in $order; do
    name="bench-$v-$who-$r"
    cat >"$DIR/rbd.toml" <<SPEC
[source]
path = "$img"
[verify]
blake3 = "${B3[$v]}"
size = $bytes
[sink]
rbd = { pool = "rbd", image = "$name", conf = "$conf" }
SPEC
    cat "$img" >/dev/null
    case $who in
      import) timeit "rbd-$v-import" "${CLIENT[@]}" env -u CEPH_ARGS "${RBD[@]}" import --no-progress "$img" "rbd/$name" ;;
      imgpipe) timeit "rbd-$v-imgpipe" "${CLIENT[@]}" env -u CEPH_ARGS "$bin" run --progress never "$DIR/rbd.toml" ;;
      imgpipe*) timeit "rbd-$v-$who" "${CLIENT[@]}" env CEPH_ARGS="${extra[$((${who#imgpipe} - 1))]}" "$bin" run --progress never "$DIR/rbd.toml" ;;
    esac
    if [ "$r" = 1 ]; then
      "${RBD[@]}" export --no-progress "rbd/$name" - | cmp -n "$bytes" - "$img" || { echo "rbd $who: export differs from $img" >&2; exit 1; }
    fi
    "${RBD[@]}" rm --no-progress "rbd/$name" >/dev/null
  done
}

for r in $(seq 1 "$RUNS"); do
  for v in $VARIANTS; do
    case " $SINKS " in *" block "*) run_block "$v" "$r" ;; esac
    case " $SINKS " in *" rbd "*) run_rbd "$v" "$r" ;; esac
  done
  echo "round $r done" >&2
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

printf '%-26s %9s %9s %8s   %s\n' contender "median s" "CPU s" "MB/s" "all wall s"
report() { # key
  local m c
  m=$(echo "${T[$1]}" | median); c=$(echo "${C[$1]}" | median)
  printf '%-26s %9.3f %9.3f %8.0f   %s\n' "$1" "$m" "$c" "$(awk -v b="$bytes" -v m="$m" 'BEGIN{print b/m/1e6}')" "${T[$1]}"
  eval "M_${1//-/_}=$m"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
for v in $VARIANTS; do
  case " $SINKS " in *" block "*)
    for who in dd ddsync; do report "block-$v-$who"; done
    [ "$FIO" = 1 ] && { report "block-$v-fio-psync"; report "block-$v-fio-io_uring"; }
    a="M_block_${v}_dd"; b="M_block_${v}_ddsync"
    for d in $DEPTHS; do
      k=$(block_key "$v" "$d")
      report "$k"
      i="M_${k//-/_}"
      echo "  $v: $k / dd oflag=direct = $(ratio "${!a}" "${!i}")x, / dd oflag=direct conv=fsync = $(ratio "${!b}" "${!i}")x (throughput ratio, >1 = sink faster)"
    done
    ;;
  esac
  case " $SINKS " in *" rbd "*)
    a="M_rbd_${v}_import"
    for who in "${RBD_VARIANTS[@]}"; do
      report "rbd-$v-$who"
      [ "$who" = import ] && continue
      i="M_rbd_${v}_$who"
      label=""; [ "$who" = imgpipe ] || label=" (CEPH_ARGS=${extra[$((${who#imgpipe} - 1))]})"
      echo "  $v: RBD sink$label / rbd import = $(ratio "${!a}" "${!i}")x"
    done
    ;;
  esac
done
echo "runs=$RUNS size=${SIZE_MIB}MiB dir=$DIR pin=${PIN:-none} $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
