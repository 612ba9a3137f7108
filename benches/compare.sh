#!/usr/bin/env bash
# Measure imgpipe against the physical bound, in one run, alternating the contenders.
#
#   benches/compare.sh [SIZE_MIB=2048] [RUNS=3] [DIR=/var/tmp/imgpipe-bench]
#
# Bound (issue 2): the lower of (a) single-core SHA-512 over the same bytes (`openssl dgst
# -sha512`) and (b) `dd bs=4M oflag=direct` writing the same bytes to the same filesystem.
# Contender: `imgpipe run` file → {sha512, sha256} → file. Prints medians, ratios, peak RSS.
set -euo pipefail
SIZE_MIB="${1:-2048}"; RUNS="${2:-3}"; DIR="${3:-/var/tmp/imgpipe-bench}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$DIR"
bin="$repo/target/release/imgpipe"
(cd "$repo" && cargo build --release -q -p imgpipe-cli)

img="$DIR/random-${SIZE_MIB}M.raw"
if [ ! -f "$img" ] || [ "$(stat -c %s "$img")" != $((SIZE_MIB << 20)) ]; then
  echo "preparing $img" >&2
  openssl enc -aes-128-ctr -pass pass:imgpipe -nosalt -pbkdf2 -in /dev/zero 2>/dev/null \
    | head -c $((SIZE_MIB << 20)) > "$img"
fi
sha512=$(openssl dgst -sha512 -r "$img" | cut -d' ' -f1)
sha256=$(openssl dgst -sha256 -r "$img" | cut -d' ' -f1)
cat > "$DIR/spec.toml" <<SPEC
[source]
path = "$img"
[verify]
sha512 = "$sha512"
sha256 = "$sha256"
size = $((SIZE_MIB << 20))
[sink]
path = "$DIR/out.raw"
SPEC

# Wall seconds and peak RSS (KiB) of a command, via python's resource module.
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
dt = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
if r.returncode != 0:
    sys.exit(f"command failed ({r.returncode}): {sys.argv[1:]}")
print(f"{dt:.3f} {rss}")
PY
}

declare -A T R
for i in $(seq 1 "$RUNS"); do
  cat "$img" > /dev/null   # same page-cache state for every contender
  read -r t r < <(measure openssl dgst -sha512 "$img"); T[sha512]+="$t "; R[sha512]=$r
  rm -f "$DIR/dd.out"
  read -r t r < <(measure dd if="$img" of="$DIR/dd.out" bs=4M oflag=direct); T[dd]+="$t "; R[dd]=$r
  rm -f "$DIR/dd.out" "$DIR/out.raw"
  read -r t r < <(measure "$bin" run --progress never "$DIR/spec.toml"); T[imgpipe]+="$t "; R[imgpipe]=$r
  rm -f "$DIR/out.raw"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
bytes=$((SIZE_MIB << 20))
printf '%-34s %9s %10s %12s\n' contender "median s" "MB/s" "peak RSS MiB"
for k in sha512 dd imgpipe; do
  m=$(echo "${T[$k]}" | median)
  printf '%-34s %9.3f %10.0f %12.1f\n' "$k" "$m" "$(echo "$bytes / $m / 1000000" | awk '{print $1/$3/$5}')" "$(awk -v r="${R[$k]}" 'BEGIN{print r/1024}')"
  eval "M_$k=$m"
done
bound=$(awk -v a="$M_sha512" -v b="$M_dd" 'BEGIN{print (a>b)?a:b}')
awk -v b="$bound" -v i="$M_imgpipe" 'BEGIN{printf "imgpipe / bound = %.2f (bound = slower of sha512 and dd: %.3f s)\n", b/i, b}'
echo "runs=$RUNS size=${SIZE_MIB}MiB dir=$DIR machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
