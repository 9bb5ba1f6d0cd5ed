#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (as root, with
# apt-get) and runs the whole suite: format, lints, unit + integration +
# golden tests against qemu-img / libnbd / nbdkit, fuzz smoke runs, and a
# benchmark smoke run. Exits non-zero on the first failure.
#
#   scripts/test.sh            everything
#   SKIP_FUZZ=1 scripts/test.sh   everything but the fuzz smoke runs (local use)
#   FUZZ_SECONDS=60 scripts/test.sh  longer fuzz runs (default 15 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# --- 1. System packages the tests drive (never skipped: a missing tool fails). ---
need_pkgs=()
command -v qemu-img >/dev/null || need_pkgs+=(qemu-utils)
command -v qemu-nbd >/dev/null || need_pkgs+=(qemu-utils)
command -v nbdinfo >/dev/null || need_pkgs+=(libnbd-bin)
command -v nbdcopy >/dev/null || need_pkgs+=(libnbd-bin)
command -v nbdkit >/dev/null || need_pkgs+=(nbdkit)
command -v fio >/dev/null || need_pkgs+=(fio)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v cc >/dev/null || need_pkgs+=(build-essential)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v mkntfs >/dev/null || need_pkgs+=(ntfs-3g)
command -v ntfs-3g >/dev/null || need_pkgs+=(ntfs-3g)
command -v mkfs.fat >/dev/null || need_pkgs+=(dosfstools)
command -v mcopy >/dev/null || need_pkgs+=(mtools)
command -v sgdisk >/dev/null || need_pkgs+=(gdisk)
command -v sfdisk >/dev/null || need_pkgs+=(fdisk)
command -v pvcreate >/dev/null || need_pkgs+=(lvm2)
# The instant recovery boot test (tests/e2e/instant.rs): a tiny Linux disk booted by QEMU.
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
command -v extlinux >/dev/null || need_pkgs+=(extlinux)
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || [ -f /usr/lib/SYSLINUX/mbr.bin ] || need_pkgs+=(syslinux-common)
busybox --list 2>/dev/null | grep -qx insmod || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need_pkgs+=(linux-image-amd64)
# The govmomi simulator test (tests/e2e/vcenter/govmomi.rs): Go and Debian's govmomi sources.
command -v go >/dev/null || need_pkgs+=(golang-go)
[ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ] || need_pkgs+=(golang-github-vmware-govmomi-dev)
# The web console's browser tests (tests/e2e/console.rs): headless Chromium over WebDriver.
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  step "installing ${need_pkgs[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing ${need_pkgs[*]}; run as root (apt-get) or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  # The distribution's qemu-system-x86 replaces a newer qemu-utils (a backport) that is not its
  # version: put the distribution's qemu-utils back (the tests work with QEMU 7.2 and later).
  if ! command -v qemu-img >/dev/null; then
    apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
  fi
fi
for t in qemu-img qemu-nbd nbdinfo nbdcopy nbdkit fio systemd-analyze mkfs.ext4 debugfs mkswap mkntfs ntfs-3g mkfs.fat mcopy sgdisk sfdisk pvcreate losetup qemu-system-x86_64 extlinux busybox cpio go chromium chromedriver; do
  command -v "$t" >/dev/null || { echo "error: $t still missing after install" >&2; exit 1; }
done

# The object tier's tests (tests/e2e/object.rs) run Garage, a real distributed S3 store, as
# three nodes on loopback. It is built from crates.io once (about 10 minutes on 2 cores, at
# opt-level 1 without LTO: the tests move a few hundred MiB) and reused from the cache on every
# later run; it needs `bundled-libs` (or system libraries) beside its `lmdb` store. Garage is
# AGPL: we only run it as a separate program, never link it.
GARAGE_VERSION=2.5.0
export SENDENSE_TOOLS="${SENDENSE_TOOLS:-$HOME/.cache/sendense-tools}"
garage_bin="$SENDENSE_TOOLS/garage/bin/garage"
if ! "$garage_bin" --version 2>/dev/null | grep -qF "$GARAGE_VERSION"; then
  step "installing garage $GARAGE_VERSION into $SENDENSE_TOOLS/garage (once; cached)"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_LTO=false \
    cargo install --locked garage --version "$GARAGE_VERSION" --no-default-features \
    --features lmdb,bundled-libs --root "$SENDENSE_TOOLS/garage"
fi
"$garage_bin" --version >/dev/null || { echo "error: garage missing after install" >&2; exit 1; }

# --- 2. Rust checks. ---
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "sendense-nbd without its tokio feature (wire, codec, session, exports, TLS material)"
cargo clippy -p sendense-nbd --no-default-features --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked >/dev/null

# --- 3. Fuzz smoke runs (cargo-fuzz on stable needs RUSTC_BOOTSTRAP=1). ---
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  if ! command -v cargo-fuzz >/dev/null; then
    step "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
  fi
  targets=$(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz list)
  for t in $targets; do
    step "fuzz smoke: $t (${FUZZ_SECONDS:-15} s)"
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="${FUZZ_SECONDS:-15}" -rss_limit_mb=2048)
  done
fi

# --- 4. Benchmark smoke run: every criterion bench once, tiny, not timed. ---
step "criterion benches (smoke, --test mode)"
cargo bench -p sendense --bench qcow2 --locked -- --test

echo
echo "scripts/test.sh: all checks passed"
