#!/usr/bin/env bash
# Builds the Ferry `probe` test guest: OUTDIR/vmlinuz, OUTDIR/initrd.img (gzip'd newc
# cpio: busybox, virtio + power-button modules, /init, /bin/workload) and OUTDIR/STAMP.
#
# Usage: guest/probe/build.sh OUTDIR
#
# The stamp is the sha256 of this script, init, workload.c and the concrete Debian
# cloud kernel package (name=version) that linux-image-cloud-amd64 depends on. When
# OUTDIR/STAMP matches, the script exits at once. The kernel resolution is cached in
# OUTDIR/.kernel, keyed on the state of the apt lists, so the up-to-date check does
# not run apt-cache (which takes ~0.5 s per call without a pkgcache).
# If the apt lists are empty (offline) and OUTDIR is already built, the build is kept.
set -euo pipefail
shopt -s nullglob

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
META=linux-image-cloud-amd64
# Modules to load; the order is computed from their depends= fields below.
MODULES=(virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
  failover net_failover virtio_net button evdev)
APPLETS=(sh mount umount insmod cat echo ls sleep sync poweroff reboot dmesg)

mkdir -p "$OUT"
log() { echo "probe-build: $*" >&2; }

built() { [[ -s "$OUT/STAMP" && -s "$OUT/vmlinuz" && -s "$OUT/initrd.img" ]]; }

lists_key() {
  local f=(/var/lib/apt/lists/*_Packages*)
  if ((${#f[@]} == 0)); then echo none; return; fi
  stat -c '%n %s %Y' "${f[@]}" | sha256sum | cut -d' ' -f1
}

# Prints "PKG VERSION" of the concrete kernel package, or nothing.
resolve_kernel() {
  apt-cache show --no-all-versions "$META" 2>/dev/null |
    sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-cloud-amd64\) (= \([^)]*\)).*/\1 \2/p' | head -n1
}

KPKG= KVER=
kernel() {
  local key cached
  key=$(lists_key)
  if [[ $key != none && -f "$OUT/.kernel" ]]; then
    cached=$(cat "$OUT/.kernel")
    if [[ ${cached%% *} == "$key" ]]; then
      read -r _ KPKG KVER <<<"$cached"
      return 0
    fi
  fi
  read -r KPKG KVER < <(resolve_kernel; echo) || true
  if [[ -n $KPKG && -n $KVER ]]; then
    echo "$key $KPKG $KVER" >"$OUT/.kernel"
    return 0
  fi
  return 1
}

stamp() {
  { cat "$HERE/build.sh" "$HERE/init" "$HERE/workload.c"; echo "kernel=$KPKG=$KVER"; } | sha256sum | cut -d' ' -f1
}

if ! kernel; then
  if built; then
    log "cannot resolve $META (apt lists empty or offline): keeping the existing build in $OUT"
    exit 0
  fi
  log "apt-get update (cannot resolve $META)"
  apt-get update -qq >&2
  kernel || { log "cannot resolve $META even after apt-get update"; exit 1; }
fi
STAMP=$(stamp)
if [[ -f "$OUT/STAMP" ]] && [[ $(cat "$OUT/STAMP") == "$STAMP" ]] && built; then
  exit 0
fi

T0=$(date +%s.%N)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-probe-build.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/dl"
chmod 0711 "$TMP"; chmod 0777 "$TMP/dl" # lets apt's _apt sandbox user write the .deb

log "downloading $KPKG=$KVER"
if ! (cd "$TMP/dl" && apt-get download -q "$KPKG=$KVER" >&2); then
  log "download failed: apt-get update and retry"
  apt-get update -qq >&2
  rm -f "$OUT/.kernel"
  kernel || { log "cannot resolve $META after apt-get update"; exit 1; }
  STAMP=$(stamp)
  (cd "$TMP/dl" && apt-get download -q "$KPKG=$KVER" >&2)
fi
debs=("$TMP"/dl/*.deb)
((${#debs[@]} == 1)) || { log "expected one .deb, got ${#debs[@]}"; exit 1; }
dpkg-deb -x "${debs[0]}" "$TMP/k"

vmlinuz=("$TMP"/k/boot/vmlinuz-*)
((${#vmlinuz[@]} == 1)) || { log "no single boot/vmlinuz-* in $KPKG"; exit 1; }
kdirs=("$TMP"/k/lib/modules/*/kernel)
((${#kdirs[@]} == 1)) || { log "no single lib/modules/*/kernel in $KPKG"; exit 1; }

# Initramfs tree.
R=$TMP/root
mkdir -p "$R"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$R/bin/busybox"
for a in "${APPLETS[@]}"; do ln -s busybox "$R/bin/$a"; done
install -m 0755 "$HERE/init" "$R/init"
gcc -O2 -Wall -Wextra -static -pthread -o "$R/bin/workload" "$HERE/workload.c"
strip "$R/bin/workload"

declare -A DEPS=()
for m in "${MODULES[@]}"; do
  f=$(find "${kdirs[0]}" -name "$m.ko" -print -quit)
  [[ -n $f ]] || { log "module $m.ko not found in $KPKG"; exit 1; }
  cp "$f" "$R/lib/modules/$m.ko"
  d=$(grep -a -o -m1 'depends=[A-Za-z0-9_,-]*' "$f" | head -n1 || true)
  d=${d#depends=}
  DEPS[$m]=${d//,/ }
done
# Dependencies first (depth-first topological order).
declare -A DONE=()
ORDER=()
visit() {
  local m=$1 d
  [[ -n ${DONE[$m]:-} ]] && return 0
  DONE[$m]=1
  for d in ${DEPS[$m]:-}; do
    [[ -n ${DEPS[$d]+x} ]] || { log "module $m needs $d, which is not in the list"; exit 1; }
    visit "$d"
  done
  ORDER+=("$m")
}
for m in "${MODULES[@]}"; do visit "$m"; done
printf '%s\n' "${ORDER[@]}" >"$R/lib/modules/order"

(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9 -n) >"$TMP/initrd.img"

# Publish: drop the stamp first, replace the files, write the stamp last.
rm -f "$OUT/STAMP"
cp "${vmlinuz[0]}" "$OUT/vmlinuz.tmp" && mv -f "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv -f "$TMP/initrd.img" "$OUT/initrd.img"
echo "$STAMP" >"$OUT/STAMP.tmp" && mv -f "$OUT/STAMP.tmp" "$OUT/STAMP"
log "built $OUT ($KPKG $KVER, modules: ${ORDER[*]}) in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
