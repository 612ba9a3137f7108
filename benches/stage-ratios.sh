#!/usr/bin/env bash
# Ratios for the signature, encryption and decode stages, measured in one run (medians of RUNS):
#  - signed (RSA-PSS/SHA-256 + sha512) vs the slowest hash alone (sha512 only)       [issue 4]
#  - LUKS1-encrypted vs the identical unencrypted run                                [issue 5]
#  - qcow2 → raw with sha512 of the source vs `qemu-img convert -O raw`              [issue 6]
#   benches/stage-ratios.sh [SIZE_MIB=2048] [RUNS=3] [DIR=/var/tmp/imgpipe-bench]
# Honours CARGO_TARGET_DIR. The image is random (no zero extents), so the unencrypted run skips
# nothing that the encrypted one must write. Run under `flock LOCKFILE` on shared machines.
set -euo pipefail
SIZE_MIB="${1:-2048}"; RUNS="${2:-3}"; DIR="${3:-/var/tmp/imgpipe-bench}"
repo="$(cd "$(dirname "$0")/.." && pwd)"; bin="${CARGO_TARGET_DIR:-$repo/target}/release/imgpipe"
mkdir -p "$DIR"; (cd "$repo" && cargo build --release -q -p imgpipe-cli)
img="$DIR/random-${SIZE_MIB}M.raw"
[ -f "$img" ] || openssl enc -aes-128-ctr -pass pass:imgpipe -nosalt -pbkdf2 -in /dev/zero 2>/dev/null | head -c $((SIZE_MIB << 20)) > "$img"
q="$DIR/random-${SIZE_MIB}M.qcow2"
[ -f "$q" ] || qemu-img convert -f raw -O qcow2 "$img" "$q"
sha512=$(openssl dgst -sha512 -r "$img" | cut -d' ' -f1)
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=bench -days 2 -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null
sig=$(openssl dgst -sha256 -sign "$DIR/key.pem" -sigopt rsa_padding_mode:pss "$img" | base64 -w 0)
printf 'pass' > "$DIR/pass.txt"
common="[source]\npath = \"$img\"\n[verify]\nos_hash_algo = \"sha512\"\nos_hash_value = \"$sha512\"\n"
printf "$common[sink]\npath = \"$DIR/o.raw\"\n" > "$DIR/plain.toml"
printf "$common[verify.signature]\nsignature = \"$sig\"\nhash_method = \"SHA-256\"\nkey_type = \"RSA-PSS\"\ncertificate = \"$DIR/cert.pem\"\n[sink]\npath = \"$DIR/o.raw\"\n" > "$DIR/signed.toml"
printf "$common[encrypt]\nformat = \"luks1\"\npassphrase_file = \"$DIR/pass.txt\"\npbkdf_iterations = 1000\n[sink]\npath = \"$DIR/o.raw\"\n" > "$DIR/luks.toml"
printf "[source]\npath = \"$q\"\n[inspect]\ndisk_format = \"qcow2\"\n[verify]\nreport = [\"sha512\"]\n[sink]\npath = \"$DIR/o.raw\"\n" > "$DIR/qcow2.toml"
t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; echo "$(date +%s.%N) - $s" | bc -l 2>/dev/null || python3 -c "print($(date +%s.%N) - $s)"; }
declare -A T
for i in $(seq 1 "$RUNS"); do
  for k in plain signed luks qcow2; do rm -f "$DIR/o.raw"; T[$k]+="$(t "$bin" run --progress never "$DIR/$k.toml") "; done
  rm -f "$DIR/o.raw"; T[qemu]+="$(t qemu-img convert -f qcow2 -O raw "$q" "$DIR/o.raw") "
done
rm -f "$DIR/o.raw"
med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for k in plain signed luks qcow2 qemu; do eval "M_$k=$(echo "${T[$k]}" | med)"; printf '%-8s median %.3f s\n' "$k" "$(eval echo \$M_$k)"; done
awk -v a="$M_plain" -v b="$M_signed" 'BEGIN{printf "signed throughput / sha512-only throughput = %.2f\n", a/b}'
awk -v a="$M_plain" -v b="$M_luks" 'BEGIN{printf "LUKS1 run time / unencrypted run time = %.2f (+%.0f%%)\n", b/a, (b/a-1)*100}'
awk -v a="$M_qemu" -v b="$M_qcow2" 'BEGIN{printf "qcow2->raw+sha512: imgpipe speed / qemu-img convert speed = %.2f\n", a/b}'
