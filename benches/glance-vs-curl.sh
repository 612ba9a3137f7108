#!/usr/bin/env bash
# `imgpipe run` of an image from the project's real Glance (scripts/services/glance.sh) vs
# `curl -o /dev/null` of the same data URL, measured in one run: the contenders alternate and
# each figure is the median of RUNS.
#
#   benches/glance-vs-curl.sh [SIZE_MIB=1024] [RUNS=3] [DIR=/var/tmp/imgpipe-glance-bench]
#
# Contenders (the spec names only endpoint + image_id: the record drives the checks, i.e.
# sha512 of the stored bytes, size, format inspection):
#   curl    curl -s -o /dev/null DATA_URL
#   file    imgpipe run, [sink] = a file in DIR (same file system; fsync + rename)
#   verify  imgpipe run, no sink (verify only)
#   drain   HttpSource alone (no hashing, no sink): the ignored test bench_drain_http_source
#   local   imgpipe run of Glance's stored file from the page cache with the same checks
#           (sha512 from the record, size), no sink: the pipeline without the network, i.e.
#           the bound the verify run can reach (SHA-512 is serial: one core)
# and the ratios throughput(x)/throughput(curl). Release builds; the timing loop runs under
# `flock $BENCH_LOCK` (default DIR/bench.lock) so measurements on a shared machine do not
# overlap. The Glance server is stopped by PID on exit.
set -euo pipefail
SIZE_MIB="${1:-1024}"
RUNS="${2:-3}"
DIR="${3:-/var/tmp/imgpipe-glance-bench}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
lock="${BENCH_LOCK:-$DIR/bench.lock}"

echo "building release binaries ..." >&2
(cd "$repo" && cargo build --release -q -p imgpipe-cli)
bin="$target/release/imgpipe"
drain="$(cd "$repo" && cargo test --release -p imgpipe-io --test glance --no-run 2>&1 |
  sed -n 's/.*Executable tests\/glance.rs (\(.*\))/\1/p' | tail -1)"
[ -x "$bin" ] && [ -x "$drain" ] || { echo "build failed (bin=$bin drain=$drain)" >&2; exit 1; }

gl="$DIR/glance"
cleanup() { bash "$repo/scripts/services/glance.sh" stop "$gl" || true; rm -f "$DIR/out.raw"; }
trap cleanup EXIT
GL="$(IMGPIPE_SERVICE_OWNER_PID=$$ bash "$repo/scripts/services/glance.sh" start 0 "$gl" | tail -1)"

img="$DIR/random-${SIZE_MIB}M.raw"
if [ ! -f "$img" ]; then # pseudo-random (incompressible) bytes; openssl dies of SIGPIPE at the end
  head -c $((SIZE_MIB << 20)) < <(openssl enc -aes-128-ctr -pass pass:imgpipe -nosalt -pbkdf2 \
    -in /dev/zero 2>/dev/null) >"$img.tmp"
  mv "$img.tmp" "$img"
fi
id="$(curl -sf -X POST -H 'Content-Type: application/json' \
  -d '{"name":"bench","disk_format":"raw","container_format":"bare"}' "$GL/v2/images" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
echo "uploading $SIZE_MIB MiB as image $id ..." >&2
curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$img" "$GL/v2/images/$id/file"
url="$GL/v2/images/$id/file"
stored="$gl/images/$id"
cmp -s "$img" "$stored" || { echo "Glance's store does not hold the uploaded bytes" >&2; exit 1; }

printf '[source.glance]\nendpoint = "%s"\nimage_id = "%s"\n' "$GL" "$id" >"$DIR/verify.toml"
sha512="$(curl -sf "$GL/v2/images/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["os_hash_value"])')"
printf '[source]\npath = "%s"\n[verify]\nos_hash_algo = "sha512"\nos_hash_value = "%s"\nsize = %s\n' \
  "$stored" "$sha512" "$((SIZE_MIB << 20))" >"$DIR/local.toml"
printf '[source.glance]\nendpoint = "%s"\nimage_id = "%s"\n[sink]\npath = "%s/out.raw"\n' \
  "$GL" "$id" "$DIR" >"$DIR/file.toml"

secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.4f}')" "$@"; }
timed() { # timed NAME CMD... : run CMD, append its wall time to T[NAME]
  local name="$1" s e
  shift
  s=$EPOCHREALTIME
  "$@" >"$DIR/$name.out" 2>"$DIR/$name.err" || { echo "$name failed:" >&2; cat "$DIR/$name.err" "$DIR/$name.out" >&2; exit 1; }
  e=$EPOCHREALTIME
  T[$name]+="$(secs "$s" "$e") "
}
declare -A T
DRAIN_CPU=""
cat "$stored" >/dev/null # warm the page cache for everyone alike

if [ -w "$(dirname "$lock")" ]; then
  exec 8>"$lock"
  echo "waiting for $lock ..." >&2
  flock 8
fi
echo "measuring (load: $(cut -d' ' -f1-3 /proc/loadavg)) ..." >&2
for _ in $(seq 1 "$RUNS"); do
  timed curl curl -sf -o /dev/null "$url"
  rm -f "$DIR/out.raw"
  timed file "$bin" run --json --progress never "$DIR/file.toml"
  timed verify "$bin" run --json --progress never "$DIR/verify.toml"
  timed drain env IMGPIPE_BENCH_DATA_URL="$url" "$drain" --ignored --exact bench_drain_http_source --nocapture
  DRAIN_CPU+="$(awk '/^DRAIN_SECONDS/{for (i = 1; i < NF; i++) if ($i == "CPU_USER") u = $(i + 1); else if ($i == "CPU_SYS") s = $(i + 1); print u + s}' "$DIR/drain.out") "
  timed local "$bin" run --json --progress never "$DIR/local.toml"
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
flock -u 8 2>/dev/null || true
cmp -s "$img" "$DIR/out.raw" || { echo "the file sink's output differs from the image" >&2; exit 1; }

med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
declare -A M
mb=$((SIZE_MIB << 20))
printf '%s MiB from Glance at %s, %s runs (load after: %s)\n' "$SIZE_MIB" "$GL" "$RUNS" "$load_after"
for k in curl file verify drain local; do
  M[$k]="$(echo "${T[$k]}" | med)"
  awk -v k="$k" -v t="${M[$k]}" -v all="${T[$k]}" -v b="$mb" \
    'BEGIN{printf "  %-7s median %6.3f s  %6.0f MB/s   (runs: %s)\n", k, t, b/t/1e6, all}'
done
for k in file verify drain local; do
  awk -v k="$k" -v c="${M[curl]}" -v t="${M[$k]}" \
    'BEGIN{printf "ratio %-6s throughput / curl -o /dev/null throughput = %.2f\n", k, c/t}'
done
awk -v l="${M[local]}" -v t="${M[verify]}" \
  'BEGIN{printf "verify from Glance / the same checks on the local file (throughput) = %.2f\n", l/t}'
dc="$(echo "$DRAIN_CPU" | med)"
[ -n "$dc" ] && awk -v c="$dc" -v b="$mb" \
  'BEGIN{printf "drain: HttpSource CPU (user+sys of the process, source created to end) median %.3f s = %.2f CPU-s per GiB\n", c, c/(b/1073741824)}'
for k in verify local; do
  echo "stages of the last $k run (busy seconds):"
  python3 - "$DIR/$k.out" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r.get("stages", []):
    print(f"  {s['name'][:60]:<60} busy {s['busy_seconds']:.3f} s")
PYEOF
done
