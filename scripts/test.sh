#!/usr/bin/env bash
# imgpipe's whole test suite, from a fresh machine: installs what the tests need (Debian
# packages, the Python venv of differential oracles, cargo-fuzz), then runs formatting and lint
# checks, every test (oracle-backed tests are required, not skipped), and a short fuzz smoke run.
#
#   scripts/test.sh            everything
#   FUZZ_SECONDS=0 scripts/test.sh   skip the fuzz smoke run
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }

# 1. System packages -------------------------------------------------------------------------
# qemu-img/qemu-io are the format oracle, cryptsetup the LUKS oracle, python3-venv hosts
# oslo.utils / cursive / cryptography, xorriso builds ISO test images, fdisk/gdisk partition tables.
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
command -v xorriso >/dev/null || need+=(xorriso)
command -v genisoimage >/dev/null || need+=(genisoimage)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v sgdisk >/dev/null || need+=(gdisk)
command -v lvcreate >/dev/null || need+=(lvm2)
command -v losetup >/dev/null || need+=(mount)
# Block-sink tests: mkfs.ext4 (mounted-device refusals), mkswap/swapon, partx, fallocate.
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
{ command -v mkswap && command -v swapon && command -v partx && command -v fallocate; } >/dev/null \
  || need+=(util-linux)
command -v pkg-config >/dev/null || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  step "apt-get install ${need[*]}"
  if [ "$(id -u)" != 0 ]; then echo "need root to install: ${need[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Single-node Ceph daemons + librbd-dev for the RBD sink (its own idempotent installer).
step "ceph packages"
scripts/services/ceph.sh install

# 2. Oracle venv -----------------------------------------------------------------------------
step "python oracle venv (oslo.utils, cursive, cryptography, glanceclient)"
IMGPIPE_ORACLE_PYTHON="$(scripts/oracle-venv.sh)"
export IMGPIPE_ORACLE_PYTHON
export IMGPIPE_REQUIRE_ORACLES=1

# Everything is built once, with the real RBD sink (librbd) enabled.
FEATURES="--features imgpipe-rbd/librbd,imgpipe/rbd,imgpipe-cli/rbd"

# 3. Static checks ---------------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked $FEATURES -- -D warnings

# 4. Tests -----------------------------------------------------------------------------------
step "cargo test"
mkdir -p target
if ! cargo test --workspace --locked $FEATURES 2>&1 | tee target/test-output.txt | grep -vE '^test .* \.\.\. ok$'; then
  echo "cargo test failed"; exit 1
fi
read -r passed failed < <(awk '/^test result: /{for(i=1;i<=NF;i++){if($i ~ /^passed;?$/)p+=$(i-1); if($i ~ /^failed;?$/)f+=$(i-1)}} END{print p+0, f+0}' target/test-output.txt)

# 4b. Python package (python/): build the abi3 wheel with maturin, install it into the oracle
# venv, run pytest. The wheel is built in the dev profile at the test profile's opt-level, so
# the dependencies cargo test just compiled are reused (same fingerprints); only the extension
# crate and the crates whose features differ (imgpipe, imgpipe-rbd: no librbd in the wheel)
# compile here. --auditwheel skip: this wheel links the system OpenSSL and is only installed
# on this machine.
step "python package: maturin build + pytest"
py_bin="$(dirname "$IMGPIPE_ORACLE_PYTHON")"
rm -rf target/python-wheel
py_t0=$(date +%s)
CARGO_PROFILE_DEV_OPT_LEVEL=2 "$py_bin/maturin" build --locked --profile dev --strip \
  --auditwheel skip \
  --manifest-path python/Cargo.toml --interpreter "$IMGPIPE_ORACLE_PYTHON" --out target/python-wheel
"$py_bin/pip" install -q --force-reinstall --no-deps target/python-wheel/imgpipe-*.whl
echo "wheel built and installed in $(( $(date +%s) - py_t0 ))s"
IMGPIPE_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/imgpipe" "$IMGPIPE_ORACLE_PYTHON" -m pytest -q -p no:cacheprovider \
  python/tests 2>&1 | tee target/pytest-output.txt
read -r py_passed py_failed < <(awk '/ passed| failed/{for(i=1;i<=NF;i++){if($i ~ /^passed/)p=$(i-1); if($i ~ /^failed/)f=$(i-1)}} END{print p+0, f+0}' target/pytest-output.txt)
passed=$(( passed + py_passed )); failed=$(( failed + py_failed ))

# 5. Fuzz smoke ------------------------------------------------------------------------------
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
if [ "$FUZZ_SECONDS" != 0 ]; then
  step "fuzz smoke (${FUZZ_SECONDS}s per target)"
  if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "nightly toolchain missing: cannot fuzz" >&2; exit 1
  fi
  command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz >/dev/null
  for target in $(cd fuzz && cargo +nightly fuzz list); do
    [ -f "fuzz/fuzz_targets/$target.rs" ] || continue
    mkdir -p "fuzz/corpus/$target"
    # Fuzz into a scratch copy of the corpus so the committed seeds stay as they are.
    scratch="$(mktemp -d)"; cp -r "fuzz/corpus/$target/." "$scratch/"
    (cd fuzz && cargo +nightly fuzz run "$target" "$scratch" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -3)
    rm -rf "$scratch"
  done
fi

step "done"
echo "${passed} passed, ${failed} failed"
[ "$failed" = 0 ]
