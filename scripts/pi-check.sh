#!/usr/bin/env bash
# The Raspberry Pi install, proven under emulation: a Debian bookworm root file system (what
# Raspberry Pi OS bookworm is built on) for arm64 (64-bit Pi OS) and armhf (32-bit Pi OS), run
# through qemu-user-static (binfmt) in a chroot. Inside each, scripts/pi-check-inside.sh installs
# the agent with scripts/install.sh from this checkout (wheels only), surveys which extras have
# wheels, and runs the agent against the local Mosquitto. Run as root:
#
#   scripts/pi-check.sh [arm64] [armhf]        # both when none is named; `make pi-check`
#
# Root file systems come from the Debian mirror apt uses here (/etc/apt/sources.list*) and are
# cached in $PI_CHECK_CACHE (default ~/.cache/tidegate/pi): the first build takes a long while
# (debootstrap's second stage runs emulated), later runs copy the cached tree. Python packages
# come from PyPI, as on a Pi; pip's cache is kept beside the root file systems. PI_CHECK_KEEP=1
# leaves a failed run's system mounted, to look into with chroot (umount -R it afterwards).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PI_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tidegate/pi}
PACKAGES=python3,python3-venv,ca-certificates,procps,mosquitto
ARCHES=("$@")
[ ${#ARCHES[@]} -gt 0 ] || ARCHES=(arm64 armhf)

say() { printf 'pi-check: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap and chroot need it"

# Nothing of this machine's environment (pip settings, its local indexes) leaks into the board's.
CLEAN_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
           "PI_CHECK_RUN_SECONDS=${PI_CHECK_RUN_SECONDS:-30}" "PI_CHECK_EXTRAS=${PI_CHECK_EXTRAS:-}"
           # TLS under emulation on a busy machine is slow: pip's 15 s default times out
           PIP_DEFAULT_TIMEOUT=120 PIP_RETRIES=10)

# pip inside trusts the certificates this machine trusts (a proxy's CA, where there is one).
PIP_ENV=(PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt)

qemu_of() { case "$1" in arm64) echo aarch64 ;; armhf) echo arm ;; *) die "unknown architecture $1 (arm64, armhf)" ;; esac; }

ensure_host() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  for arch in "${ARCHES[@]}"; do
    local name; name=qemu-$(qemu_of "$arch")
    [ -e "/proc/sys/fs/binfmt_misc/$name" ] || update-binfmts --enable "$name"
    # F (fix binary): the kernel opens the interpreter now, so it need not exist in the chroot
    grep -q '^flags: .*F' "/proc/sys/fs/binfmt_misc/$name" || die "binfmt $name lacks the F flag"
  done
}

# The Debian mirror apt is configured with (deb822 .sources first, then one-line .list files).
mirror() {
  local uri
  uri=$(grep -hsE '^URIs:[[:space:]]*[^[:space:]]+/debian/?[[:space:]]*$' /etc/apt/sources.list.d/*.sources |
        head -n 1 | awk '{print $2}')
  if [ -z "$uri" ]; then
    uri=$(grep -hsE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+/debian/?[[:space:]]+bookworm[[:space:]]' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list | head -n 1 |
          sed -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/')
  fi
  [ -n "$uri" ] || die "no Debian mirror in /etc/apt/sources.list*"
  echo "$uri"
}

rootfs() {
  local arch=$1 dir="$CACHE/bookworm-$1"
  if [ ! -e "$dir/.complete" ]; then
    local from; from=$(mirror)
    say "$arch: building the root file system from $from (once; cached in $dir)"
    rm -rf "$dir.partial"
    mkdir -p "$CACHE"
    nice -n 10 debootstrap --arch="$arch" --variant=minbase --include="$PACKAGES" bookworm "$dir.partial" "$from" \
      > "$CACHE/debootstrap-$arch.log" 2>&1 || die "debootstrap failed: $CACHE/debootstrap-$arch.log"
    touch "$dir.partial/.complete"
    mv "$dir.partial" "$dir"
  fi
  ensure_packages "$arch" "$dir"
  echo "$dir"
}

# A cached tree from an older package list gets what is missing (apt in the chroot, once).
ensure_packages() {
  local arch=$1 dir=$2 missing=() pkg
  for pkg in ${PACKAGES//,/ }; do
    chroot "$dir" dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "$arch: adding ${missing[*]} to the cached root file system"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  mount --bind /proc "$dir/proc"
  nice -n 10 env -i "${CLEAN_ENV[@]}" DEBIAN_FRONTEND=noninteractive chroot "$dir" /bin/sh -c \
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null" || {
    umount "$dir/proc"; die "apt-get install ${missing[*]} in $dir"; }
  umount "$dir/proc"
}

# Mounts of one run, undone on exit.
MOUNTS=()
SURVEY=
cleanup() {
  local status=$? i
  if [ -n "${SURVEY:-}" ]; then kill -- "-$SURVEY" 2>/dev/null || true; SURVEY=; fi
  if [ "$status" -ne 0 ] && [ -n "${PI_CHECK_KEEP:-}" ] && [ -n "${WORK:-}" ]; then
    say "kept the failed system in $WORK/root, mounted (PI_CHECK_KEEP): chroot into it to look"
    return
  fi
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
  MOUNTS=()
  # never remove a tree that still has /dev or /proc mounted in it
  if [ -n "${WORK:-}" ] && ! grep -q " $WORK/" /proc/mounts; then rm -rf "$WORK"; fi
  WORK=
}
trap cleanup EXIT

bind() { mkdir -p "$2"; mount --bind "$1" "$2"; MOUNTS+=("$2"); }

check_arch() {
  local arch=$1 base root started
  base=$(rootfs "$arch")
  started=$(date +%s)
  WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/pi-check-$arch.XXXXXX")
  # The system under test lives on a tmpfs. On ext4, a directory's entries carry 64-bit offsets
  # (hashes); a 32-bit program's readdir() cannot hold them and fails (EOVERFLOW). A real board's
  # kernel hands 32-bit programs 32-bit offsets, but qemu-user calls the host's 64-bit kernel for
  # them, so on ext4 armhf's Mosquitto silently read nothing from include_dir (conf.d).
  mount -t tmpfs -o mode=0755 pi-check "$WORK"
  MOUNTS+=("$WORK")
  root="$WORK/root"
  cp -a "$base" "$root"  # a pristine system for every run: the install is the first one
  mkdir -p "$root/src/tidegate" "$CACHE/pip-$arch"
  # the checkout as it is (tracked and new files, uncommitted changes included)
  (cd "$HERE" && git ls-files -z --cached --others --exclude-standard |
     tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$root/src/tidegate"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca-certificates.crt"
  bind /proc "$root/proc"
  bind /dev "$root/dev"
  bind "$CACHE/pip-$arch" "$root/root/.cache/pip"
  say "$arch: root file system copied in $(( $(date +%s) - started )) s"
  # The extras survey needs nothing installed (pip's dry runs in a venv of its own), so it runs
  # beside the install and the run, in a process group of its own that a failed check stops; its
  # output follows theirs.
  nice -n 10 env -i "${CLEAN_ENV[@]}" "${PIP_ENV[@]}" setsid \
    chroot "$root" /bin/bash /src/tidegate/scripts/pi-check-inside.sh survey > "$WORK/survey.log" 2>&1 &
  SURVEY=$!
  local stage; stage=$(date +%s)
  say "$arch: installing (network: PyPI), the extras survey beside it"
  nice -n 10 env -i "${CLEAN_ENV[@]}" "${PIP_ENV[@]}" \
    chroot "$root" /bin/bash /src/tidegate/scripts/pi-check-inside.sh install
  say "$arch: install stage (install.sh, which wheels) in $(( $(date +%s) - stage )) s"
  stage=$(date +%s)
  # The run has a network of its own (loopback only): its Mosquitto on 1883 meets nobody else's.
  say "$arch: running the agent (no network but its own loopback)"
  nice -n 10 env -i "${CLEAN_ENV[@]}" unshare --net /bin/bash -c \
    'ip link set lo up && exec chroot "$1" /bin/bash /src/tidegate/scripts/pi-check-inside.sh run' _ "$root"
  say "$arch: run stage in $(( $(date +%s) - stage )) s"
  stage=$(date +%s)
  local survey=0
  wait "$SURVEY" || survey=$?
  SURVEY=
  say "$arch: the extras survey ended $(( $(date +%s) - stage )) s after the run; its output:"
  cat "$WORK/survey.log"
  [ "$survey" -eq 0 ] || die "$arch: the extras survey failed"
  cleanup
  say "$arch: ok in $(( $(date +%s) - started )) s"
}

ensure_host
for arch in "${ARCHES[@]}"; do
  qemu_of "$arch" >/dev/null
done
total=$(date +%s)
if [ ${#ARCHES[@]} -eq 1 ]; then
  check_arch "${ARCHES[0]}"
else
  # Side by side: each architecture is one emulated process at a time, so two fit two cores and
  # the check takes the longer one's time rather than the sum. Each one's output follows in turn.
  say "checking ${ARCHES[*]} side by side; each one's output follows when it is done"
  LOGS=$(mktemp -d)
  declare -A PIDS=()
  for arch in "${ARCHES[@]}"; do
    ( trap cleanup EXIT; check_arch "$arch" ) > "$LOGS/$arch.log" 2>&1 &
    PIDS[$arch]=$!
  done
  failed=()
  for arch in "${ARCHES[@]}"; do
    wait "${PIDS[$arch]}" || failed+=("$arch")
    cat "$LOGS/$arch.log"
  done
  rm -rf "$LOGS"
  [ ${#failed[@]} -eq 0 ] || die "${failed[*]} failed (above)"
fi
say "all ok (${ARCHES[*]}) in $(( $(date +%s) - total )) s"
