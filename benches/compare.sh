#!/usr/bin/env bash
# imgpipe against the physical bound and against the tools operators use today, in ONE run,
# alternating the contenders (the order rotates every round), medians of RUNS rounds.
#
#   benches/compare.sh [SIZE_MIB=2048] [RUNS=3] [DIR=/var/tmp/imgpipe-bench] [BIG_MIB=8192]
#
#   IMGPIPE_BIN=path  binary to measure (default: `cargo build --release -p imgpipe-cli` into
#                     ${CARGO_TARGET_DIR:-target} first)
#   BENCH_LOCK=file   hold flock(1) on this file from image preparation to the end (a shared
#                     machine: one measurement at a time), e.g. BENCH_LOCK=DIR/bench.lock
#   OUT=file.json     results (default DIR/compare.json); the plot is written next to it (.svg)
#
# Image: SIZE_MIB of pseudo-random data with holes (benches/mkimage.py: 75 % data per 16 MiB),
# raw, and qcow2 made from it by qemu-img; served over HTTP by benches/serve.py (sendfile) for
# the download contenders. BIG_MIB (0 = skip): peak-RSS-only runs of (a) and (c) on a BIG_MIB
# and a SIZE_MIB image with 25 % data (so the big one fits on a shared disk; the pair has the
# same data share, so the only difference is the size).
#
# Contenders (throughput = virtual image bytes / wall time):
#   bound.sha512   openssl dgst -sha512 RAW                 single-core SHA-512 (issue 2 bound)
#   bound.sha512q  openssl dgst -sha512 QCOW2               the same bound for (c)
#   bound.dd       dd bs=4M oflag=direct RAW → DIR           the sink filesystem's write speed
#   a              imgpipe file raw → sha512 + inspect → file        (Glance default)
#   a_http         the same from the local HTTP server
#   b              (a) + sha256 RSA-PSS signature                    (signed image)
#   c              imgpipe file qcow2 → sha512 of the qcow2 bytes + decode → raw file
#   d              (b) + LUKS1 encryption, from the local HTTP server
#   e              (a_http) with [cache]: the timed runs are cache hits, re-verified
#   chain.*        Nova-style multi-pass for the work of (d): curl → file, sha512sum, md5sum,
#                  sha256sum, openssl dgst -verify, qemu-img convert -t none -O raw,
#                  qemu-img convert -t none -O luks (each step timed; chain = their sum)
#   kdf.qemu       qemu-img create -f luks with the chain's options: qemu calibrates its PBKDF
#                  (≥ 0.5 s CPU per calibration, whatever iter-time says); reported separately
#                  so the ratio can exclude key setup (imgpipe runs with pbkdf_iterations = 1000)
#   qemu.fast      qemu-img convert -W -m 16 -t none -f qcow2 -O raw   (peer of c)
#   qemu.default   qemu-img convert -f qcow2 -O raw                     (for orientation)
set -euo pipefail
SIZE_MIB="${1:-2048}"; RUNS="${2:-3}"; DIR="${3:-/var/tmp/imgpipe-bench}"; BIG_MIB="${4:-8192}"
repo="$(cd "$(dirname "$0")/.." && pwd)"; here="$repo/benches"
mkdir -p "$DIR/reports"; DIR="$(cd "$DIR" && pwd)"
OUT="${OUT:-$DIR/compare.json}"
if [ -z "${IMGPIPE_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -q -p imgpipe-cli)
  IMGPIPE_BIN="$(cd "$repo" && realpath "${CARGO_TARGET_DIR:-target}")/release/imgpipe"
fi
bin="$IMGPIPE_BIN"
for tool in qemu-img curl openssl sha512sum md5sum sha256sum dd /usr/bin/time python3; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
if [ -n "${BENCH_LOCK:-}" ]; then
  exec 9>>"$BENCH_LOCK"; echo "waiting for $BENCH_LOCK" >&2; flock 9
fi
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- images, digests, key material ------------------------------------------------------------
prepare() { # SIZE_MIB DATA_PERCENT → sets RAW QCOW
  local raw="$DIR/img-$1M-$2.raw" q="$DIR/img-$1M-$2.qcow2"
  [ -f "$raw" ] || { echo "preparing $raw" >&2; python3 "$here/mkimage.py" "$raw" "$1" "$2"; }
  [ -f "$q" ] || { qemu-img convert -f raw -O qcow2 "$raw" "$q.tmp" && mv "$q.tmp" "$q"; }
  for f in "$raw" "$q"; do
    [ -f "$f.sha512" ] && [ "$f.sha512" -nt "$f" ] || openssl dgst -sha512 -r "$f" | cut -d' ' -f1 > "$f.sha512"
  done
  RAW="$raw"; QCOW="$q"
}
prepare "$SIZE_MIB" 75
raw="$RAW"; q="$QCOW"; bytes=$((SIZE_MIB << 20)); qbytes=$(stat -c %s "$q")
sha512=$(cat "$raw.sha512"); qsha512=$(cat "$q.sha512")
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=imgpipe-bench -days 2 \
  -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null
openssl x509 -pubkey -noout -in "$DIR/cert.pem" > "$DIR/pub.pem"
openssl dgst -sha256 -sign "$DIR/key.pem" -sigopt rsa_padding_mode:pss -out "$DIR/sig.bin" "$raw"
sig=$(base64 -w 0 "$DIR/sig.bin")
printf 'bench-passphrase' > "$DIR/pass.txt"

# --- local HTTP server ----------------------------------------------------------------------
mkdir -p "$DIR/www"; ln -sf "$raw" "$DIR/www/img.raw"
python3 "$here/serve.py" "$DIR/www" > "$DIR/serve.port" &
srv=$!
trap 'kill $srv 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q PORT "$DIR/serve.port" 2>/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$(cut -d' ' -f2 "$DIR/serve.port")/img.raw"

# --- specs ----------------------------------------------------------------------------------
glance_verify() { # SHA512 SIZE
  printf '[verify]\nos_hash_algo = "sha512"\nos_hash_value = "%s"\nsize = %s\n' "$1" "$2"
}
signature() {
  printf '[verify.signature]\nsignature = "%s"\nhash_method = "SHA-256"\nkey_type = "RSA-PSS"\ncertificate = "%s"\n' \
    "$sig" "$DIR/cert.pem"
}
spec_raw() { # NAME SOURCE-LINE SHA512 [extra tables...]
  local name=$1 src=$2 h=$3; shift 3
  { printf '[source]\n%s\n[inspect]\ndisk_format = "raw"\n' "$src"; glance_verify "$h" "$bytes"
    for t in "$@"; do "$t"; done; } > "$DIR/$name.toml"
}
sink_raw() { printf '[sink]\npath = "%s/out.raw"\n' "$DIR"; }
sink_luks() { printf '[sink]\npath = "%s/out.luks"\n' "$DIR"; }
luks() { printf '[encrypt]\nformat = "luks1"\npassphrase_file = "%s/pass.txt"\npbkdf_iterations = 1000\n' "$DIR"; }
cache() { printf '[cache]\ndir = "%s/cache"\n' "$DIR"; }
spec_raw a "path = \"$raw\"" "$sha512" sink_raw
spec_raw a_http "url = \"$url\"" "$sha512" sink_raw
spec_raw b "path = \"$raw\"" "$sha512" signature sink_raw
spec_raw d "url = \"$url\"" "$sha512" signature luks sink_luks
spec_raw e "url = \"$url\"" "$sha512" sink_raw cache
spec_qcow2() { # NAME QCOW SHA512 SIZE
  { printf '[source]\npath = "%s"\n[inspect]\ndisk_format = "qcow2"\n' "$2"; glance_verify "$3" "$4"; sink_raw; } > "$DIR/$1.toml"
}
spec_qcow2 c "$q" "$qsha512" "$qbytes"

# --- measurement ----------------------------------------------------------------------------
TSV="$DIR/measure.tsv"; : > "$TSV"
warm() { cat "$@" > /dev/null; }
clean() { rm -f "$DIR"/out.raw "$DIR"/out.luks "$DIR"/dd.out "$DIR"/chain.*; }
measure() { # NAME ROUND CMD... → one TSV line: name round microseconds peak-RSS-KiB stdout-file
  local name=$1 round=$2 s e; shift 2
  local rep="$DIR/reports/$name.$round.out"
  s=$(date +%s%N)
  if ! /usr/bin/time -f %M -o "$DIR/rss.tmp" "$@" > "$rep" 2> "$DIR/err.tmp"; then
    echo "FAILED: $name: $*" >&2; cat "$DIR/err.tmp" >&2; exit 1
  fi
  e=$(date +%s%N)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$round" $(((e - s) / 1000)) "$(tail -1 "$DIR/rss.tmp")" "$rep" >> "$TSV"
}
ip() { measure "$1" "$2" "$bin" run --json --progress never "$DIR/$1.toml"; }
secret="secret,id=sec0,file=$DIR/pass.txt"
c_bound_sha512() { warm "$raw"; measure bound.sha512 "$1" openssl dgst -sha512 "$raw"; }
c_bound_sha512q() { warm "$q"; measure bound.sha512q "$1" openssl dgst -sha512 "$q"; }
c_bound_dd() { warm "$raw"; measure bound.dd "$1" dd if="$raw" of="$DIR/dd.out" bs=4M oflag=direct; clean; }
c_a() { warm "$raw"; ip a "$1"; clean; }
c_a_http() { warm "$raw"; ip a_http "$1"; clean; }
c_b() { warm "$raw"; ip b "$1"; clean; }
c_c() { warm "$q"; ip c "$1"; clean; }
c_d() { warm "$raw"; ip d "$1"; clean; }
c_e() { warm "$DIR"/cache/*.data; ip e "$1"; clean; }
c_chain() {
  warm "$raw"; local r=$1 f="$DIR/chain.img"
  measure chain.1-curl "$r" curl -sS --fail -o "$f" "$url"
  measure chain.2-sha512sum "$r" sha512sum "$f"
  measure chain.3-md5sum "$r" md5sum "$f"
  measure chain.4-sha256sum "$r" sha256sum "$f"
  measure chain.5-openssl-verify "$r" openssl dgst -sha256 -sigopt rsa_padding_mode:pss \
    -verify "$DIR/pub.pem" -signature "$DIR/sig.bin" "$f"
  measure chain.6-convert-raw "$r" qemu-img convert -t none -f raw -O raw "$f" "$DIR/chain.raw"
  measure chain.7-convert-luks "$r" qemu-img convert -t none -f raw -O luks --object "$secret" \
    -o key-secret=sec0,iter-time=10 "$DIR/chain.raw" "$DIR/chain.luks"
  clean
  measure kdf.qemu "$r" qemu-img create -q -f luks --object "$secret" \
    -o key-secret=sec0,iter-time=10 "$DIR/chain.luks" "$bytes"
  clean
}
c_qemu_fast() { warm "$q"; measure qemu.fast "$1" qemu-img convert -W -m 16 -t none -f qcow2 -O raw "$q" "$DIR/out.raw"; clean; }
c_qemu_default() { warm "$q"; measure qemu.default "$1" qemu-img convert -f qcow2 -O raw "$q" "$DIR/out.raw"; clean; }

# Untimed round 0: every output checked once against the source (a wrong fast result is no
# result), the cache filled for (e), and the page cache warmed.
echo "checking outputs (untimed)" >&2
clean; rm -rf "$DIR/cache"
quiet() { "$@" >"$DIR/err.tmp" 2>&1 || { cat "$DIR/err.tmp" >&2; echo "FAILED: $*" >&2; exit 1; }; }
quiet "$bin" run --progress never "$DIR/a.toml"; cmp "$raw" "$DIR/out.raw"; clean
quiet "$bin" run --progress never "$DIR/c.toml"; cmp "$raw" "$DIR/out.raw"; clean
quiet "$bin" run --progress never "$DIR/d.toml"
qemu-img compare -q --object "$secret" --image-opts \
  "driver=luks,key-secret=sec0,file.filename=$DIR/out.luks" "driver=raw,file.filename=$raw"
clean
cache_state=pending
if "$bin" run --progress never "$DIR/e.toml" >/dev/null 2>"$DIR/err.tmp" \
    && compgen -G "$DIR/cache/*.json" >/dev/null && compgen -G "$DIR/cache/*.data" >/dev/null; then
  cmp "$raw" "$DIR/out.raw"; cache_state=measured
else
  echo "(e) pending: imgpipe run did not fill $DIR/cache ($(head -c 300 "$DIR/err.tmp"))" >&2
fi
clean

contenders=(bound_sha512 a chain bound_dd b qemu_fast c d bound_sha512q qemu_default a_http)
[ "$cache_state" = measured ] && contenders+=(e)
n=${#contenders[@]}
for round in $(seq 1 "$RUNS"); do
  for j in $(seq 0 $((n - 1))); do
    k=${contenders[$(((j + round - 1) % n))]}
    echo "round $round/$RUNS: $k" >&2
    "c_$k" "$round"
  done
done

# Peak RSS of (a) and (c), SIZE_MIB against BIG_MIB, same data share (25 %), alternating.
if [ "$BIG_MIB" != 0 ]; then
  for pair in "small $SIZE_MIB" "big $BIG_MIB"; do
    set -- $pair
    prepare "$2" 25
    spec_raw "a_$1" "path = \"$RAW\"" "$(cat "$RAW.sha512")" sink_raw
    sed -i "s/^size = .*/size = $(($2 << 20))/" "$DIR/a_$1.toml"
    spec_qcow2 "c_$1" "$QCOW" "$(cat "$QCOW.sha512")" "$(stat -c %s "$QCOW")"
    eval "RAW_$1=\$RAW QCOW_$1=\$QCOW"
  done
  for round in $(seq 1 "$RUNS"); do
    for k in small big; do
      eval "warm \$RAW_$k"; ip "a_$k" "$round"; clean
      eval "warm \$QCOW_$k"; ip "c_$k" "$round"; clean
    done
  done
fi
clean

fs="$(findmnt -n -o FSTYPE -T "$DIR") on $(findmnt -n -o SOURCE -T "$DIR")"
python3 "$here/compare_summary.py" "$TSV" "$OUT" \
  size_mib="$SIZE_MIB" big_mib="$BIG_MIB" runs="$RUNS" cache="$cache_state" \
  qcow2_bytes="$qbytes" \
  cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1)" cores="$(nproc)" \
  kernel="$(uname -r)" fs="$fs" load_start="$load_start" \
  load_end="$(cut -d' ' -f1-3 /proc/loadavg)" \
  repo_head="$(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- crates || echo +dirty)" \
  date="$(date -u +%FT%TZ)" binary="${bin#"$repo"/}"
python3 "$here/plot.py" "$OUT" "${OUT%.json}.svg"
echo "results: $OUT  plot: ${OUT%.json}.svg" >&2
