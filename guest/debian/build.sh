#!/usr/bin/env bash
# Builds the Ferry `debian` test guest: OUTDIR/debian.qcow2, a Debian 12 (bookworm) disk
# that boots the same way under SeaBIOS (machine pc) and OVMF (UEFI, machine q35), with
# systemd, the cloud kernel, cloud-init (NoCloud), qemu-guest-agent, systemd-networkd
# (DHCP on every Ethernet NIC) and a login prompt on the serial port ttyS0.
#
# Usage: guest/debian/build.sh [--check] OUTDIR
#   --check   exit 0 when OUTDIR holds an up-to-date build, 1 otherwise; build nothing.
#
# Disk (2 GiB virtual, GPT, compressed qcow2):
#   p1  1 MiB   BIOS boot partition: GRUB's i386-pc core.img (boot.img in the MBR)
#   p2  32 MiB  EFI system partition (FAT): GRUB x86_64-efi at EFI/BOOT/BOOTX64.EFI
#   p3  rest    ext4 root, made with `mkfs.ext4 -d` from an mmdebstrap tree
# The disk is assembled without mounts or loop devices (mmdebstrap mounts /proc and /dev in
# its own tree while it installs, and unmounts them): the partitions are written at their
# offsets (mke2fs -E offset; the FAT made with mkfs.fat and mtools, then dd), and the two GRUB
# images are patched the way grub-bios-setup would (boot.img's core.img sector and the
# blocklist at the end of core.img's first sector).
#
# Packages come from the host's own Debian mirror (the bookworm, bookworm-updates and
# bookworm-security lines of /etc/apt/sources.list*). OUTDIR/STAMP is the sha256 of this
# script, the candidate versions of the packages named below (and of the concrete kernel)
# and the host's GRUB/mkfs tool versions; when it matches, the script exits at once. The
# resolution is cached in OUTDIR/.resolved keyed on the state of the apt lists, as in
# guest/probe/build.sh. If the apt lists are empty (offline) and OUTDIR is built, the
# build is kept.
set -euo pipefail
shopt -s nullglob

CHECK=0
if [[ ${1:-} == --check ]]; then CHECK=1; shift; fi
if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 [--check] OUTDIR" >&2
  exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=bookworm
META=linux-image-cloud-amd64
# What the guest gets (Recommends are not installed); the first-level names go into the stamp.
PACKAGES=(systemd-sysv udev dbus systemd-resolved "$META" initramfs-tools zstd e2fsprogs
  cloud-init cloud-guest-utils qemu-guest-agent sudo iproute2)
# Host tools whose output lands in the image.
HOST_TOOLS=(mmdebstrap grub-pc-bin grub-efi-amd64-bin e2fsprogs dosfstools mtools fdisk qemu-utils)
DISK_MIB=2048
BIOS_START=2048 BIOS_SECTORS=2048 # 1 MiB at 1 MiB
ESP_START=4096 ESP_SECTORS=65536  # 32 MiB at 2 MiB
ROOT_START=69632                  # 34 MiB; the root ends 1 MiB before the disk's end
HOSTNAME_=ferry-debian
# pti=on: the tests move this guest under TCG, where QEMU 7.2 loses writes made through TLB
# entries that stayed writable across a dirty-bitmap sync; a CR3 switch at every entry from user mode
# flushes them (docs/tcg-moves.md).
CMDLINE="console=tty0 console=ttyS0,115200n8 pti=on"

((CHECK)) || mkdir -p "$OUT"
log() { echo "debian-build: $*" >&2; }
built() { [[ -s "$OUT/STAMP" && -s "$OUT/debian.qcow2" ]]; }

lists_key() {
  local f=(/var/lib/apt/lists/*_Packages*)
  if ((${#f[@]} == 0)); then echo none; return; fi
  { stat -c '%n %s %Y' "${f[@]}"; dpkg-query -W "${HOST_TOOLS[@]}" 2>&1; } | sha256sum | cut -d' ' -f1
}

# Prints "name=version" lines: candidate versions of PACKAGES, the concrete kernel, host tools.
resolve() {
  apt-cache show --no-all-versions "${PACKAGES[@]}" 2>/dev/null | awk '
    /^Package: / { p = $2 }
    /^Version: / { print p "=" $2 }
    /^Depends: / && p == "'"$META"'" && match($0, /linux-image-[0-9][^ ,]*-cloud-amd64 \(= [^)]*\)/) {
      s = substr($0, RSTART, RLENGTH); sub(/ \(= /, "=", s); sub(/\)$/, "", s); print s }'
  dpkg-query -W -f='host:${Package}=${Version}\n' "${HOST_TOOLS[@]}" 2>/dev/null || true
}

RESOLVED=
resolved() {
  local key
  key=$(lists_key)
  if [[ $key != none && -f "$OUT/.resolved" && $(head -n1 "$OUT/.resolved") == "$key" ]]; then
    RESOLVED=$(tail -n +2 "$OUT/.resolved")
    return 0
  fi
  RESOLVED=$(resolve)
  # Every package named must resolve, the kernel included.
  local n
  n=$(grep -c -v '^host:' <<<"$RESOLVED" || true)
  if ((n == ${#PACKAGES[@]} + 1)); then
    # A cache only: a read-only OUTDIR (--check as another user) just goes without it.
    { echo "$key"; echo "$RESOLVED"; } 2>/dev/null >"$OUT/.resolved" || true
    return 0
  fi
  return 1
}

stamp() { { cat "$HERE/build.sh"; echo "$RESOLVED"; } | sha256sum | cut -d' ' -f1; }

if ! resolved; then
  if built; then
    ((CHECK)) && exit 0
    log "cannot resolve the guest's packages (apt lists empty or offline): keeping the existing build in $OUT"
    exit 0
  fi
  ((CHECK)) && exit 1
  log "apt-get update (cannot resolve the guest's packages)"
  apt-get update -qq >&2
  resolved || { log "cannot resolve ${PACKAGES[*]} even after apt-get update"; exit 1; }
fi
STAMP=$(stamp)
if [[ -f "$OUT/STAMP" ]] && [[ $(cat "$OUT/STAMP") == "$STAMP" ]] && built; then
  exit 0
fi
((CHECK)) && exit 1

if [[ $(id -u) != 0 ]]; then
  log "building needs root (mmdebstrap's root mode, chroot); run as root: sudo $0 $OUT"
  exit 1
fi
for t in mmdebstrap grub-mkimage mkfs.ext4 mkfs.fat mmd mcopy sfdisk qemu-img; do
  command -v "$t" >/dev/null || { log "$t is missing: run scripts/setup (installs ${HOST_TOOLS[*]})"; exit 1; }
done

T0=$(date +%s.%N)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-debian-build.XXXXXX")
cleanup() {
  # mmdebstrap unmounts what it mounted, unless it was killed: never let rm cross into a mount.
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(findmnt -rn -o TARGET | grep -F "$TMP/" | sort -r)
  rm -rf --one-file-system "$TMP"
  rm -f "$OUT/debian.qcow2.tmp"
}
trap cleanup EXIT
ROOT=$TMP/root

# The host's Debian mirror lines for the suite, one-line format, main only.
mirrors() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2, $3 }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    awk 'BEGIN { RS = ""; FS = "\n" }
      { t = u = s = ""; en = 1
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/) t = $i; else if ($i ~ /^URIs:/) u = $i; else if ($i ~ /^Suites:/) s = $i
          else if ($i ~ /^Enabled: *no/) en = 0 }
        if (!en || t !~ /[ \t]deb([ \t]|$)/) next
        sub(/^URIs: */, "", u); sub(/^Suites: */, "", s)
        nu = split(u, us, /[ \t]+/); ns = split(s, ss, /[ \t]+/)
        for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print us[i], ss[j] }' "$f"
  done
}
MIRRORS=()
while read -r uri suite; do
  MIRRORS+=("deb $uri $suite main")
done < <(mirrors | awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security"' | sort -u)
((${#MIRRORS[@]} > 0)) || { log "no Debian $SUITE mirror in /etc/apt/sources.list*"; exit 1; }

# A root UUID and GPT ids derived from the stamp: the same inputs give the same ids.
uuid() { local h; h=$(echo "$STAMP $1" | sha256sum); echo "${h:0:8}-${h:8:4}-4${h:13:3}-8${h:17:3}-${h:20:12}"; }
ROOT_UUID=$(uuid root)

# Before the kernel is installed: an initramfs with just what a virtio (or IDE/SATA) disk needs.
ESSENTIAL_HOOK=$(cat <<'EOF'
set -e
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
printf 'MODULES=list\nCOMPRESS=zstd\n' >"$1/etc/initramfs-tools/conf.d/ferry.conf"
cat >"$1/etc/initramfs-tools/hooks/ferry-disks" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk virtio_scsi sd_mod ata_piix ahci ext4 crc32c_generic; do manual_add_modules "$m"; done
HOOK
chmod 0755 "$1/etc/initramfs-tools/hooks/ferry-disks"
EOF
)

log "mmdebstrap $SUITE from ${MIRRORS[*]}"
inc=$(IFS=,; echo "${PACKAGES[*]}")
mmdebstrap --mode=root --variant=apt --format=directory --quiet \
  --aptopt='APT::Install-Recommends "false"' --dpkgopt=force-unsafe-io \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --include="$inc" --essential-hook="$ESSENTIAL_HOOK" \
  "$SUITE" "$ROOT" "${MIRRORS[@]}" >&2
T1=$(date +%s.%N)

# Guest configuration.
echo "$HOSTNAME_" >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$HOSTNAME_" >"$ROOT/etc/hosts"
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$ROOT_UUID" >"$ROOT/etc/fstab"
: >"$ROOT/etc/machine-id" # each VM makes its own at first boot
rm -f "$ROOT/var/lib/dbus/machine-id"
cat >"$ROOT/etc/systemd/network/80-ferry-dhcp.network" <<'EOF'
# Ferry test guest: DHCP on every Ethernet NIC (cloud-init's network-config overrides this).
[Match]
Type=ether

[Network]
DHCP=yes
EOF
# A VM on a switch without DHCP must not wait two minutes for the network.
mkdir -p "$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d/ferry.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20
EOF
cat >"$ROOT/etc/cloud/cloud.cfg.d/90-ferry.cfg" <<'EOF'
# Ferry test guest: NoCloud seeds only (no network metadata probing); C.UTF-8 needs no locale-gen;
# no SSH server is installed, so no host keys.
datasource_list: [NoCloud, None]
locale: C.UTF-8
ssh_genkeytypes: []
EOF
chroot "$ROOT" systemctl enable --quiet systemd-networkd.service serial-getty@ttyS0.service >&2
chroot "$ROOT" dpkg-query -W -f='${Package}=${Version}\n' >"$TMP/packages.txt"

kver() { local k=("$ROOT"/boot/vmlinuz-*); ((${#k[@]} == 1)) || { log "expected one kernel in /boot"; exit 1; }; echo "${k[0]#"$ROOT"/boot/vmlinuz-}"; }
KVER=$(kver)
[[ -s "$ROOT/boot/initrd.img-$KVER" ]] || { log "no initrd for $KVER"; exit 1; }
# The /vmlinuz and /initrd.img links follow kernel updates inside the guest; else name the files.
KPATH=/boot/vmlinuz-$KVER IPATH=/boot/initrd.img-$KVER
[[ -L "$ROOT/vmlinuz" && -L "$ROOT/initrd.img" ]] && KPATH=/vmlinuz IPATH=/initrd.img

# GRUB: both platforms read /boot/grub/grub.cfg (and modules) from the root file system.
G=$ROOT/boot/grub
mkdir -p "$G/i386-pc" "$G/x86_64-efi"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$G/i386-pc/"
cp /usr/lib/grub/x86_64-efi/*.mod /usr/lib/grub/x86_64-efi/*.lst "$G/x86_64-efi/"
cat >"$G/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
insmod part_gpt
insmod ext2
insmod gzio
search --no-floppy --fs-uuid --set=root $ROOT_UUID
menuentry 'Debian GNU/Linux 12 (Ferry test guest)' {
  linux $KPATH root=UUID=$ROOT_UUID ro $CMDLINE
  initrd $IPATH
}
EOF
cat >"$TMP/early.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $ROOT_UUID
set prefix=(\$root)/boot/grub
EOF
CORE_MODS=(part_gpt ext2 search search_fs_uuid normal configfile linux echo serial terminal test gzio)
grub-mkimage -O i386-pc -o "$TMP/core.img" -c "$TMP/early.cfg" -p /boot/grub biosdisk "${CORE_MODS[@]}"
grub-mkimage -O x86_64-efi -o "$TMP/BOOTX64.EFI" -c "$TMP/early.cfg" -p /boot/grub "${CORE_MODS[@]}"
core_sectors=$(( ($(stat -c %s "$TMP/core.img") + 511) / 512 ))
((core_sectors <= BIOS_SECTORS)) || { log "core.img ($core_sectors sectors) does not fit the BIOS boot partition"; exit 1; }

# The raw disk: GPT, then each partition written at its offset.
RAW=$TMP/disk.raw
truncate -s "${DISK_MIB}M" "$RAW"
ROOT_SECTORS=$((DISK_MIB * 2048 - ROOT_START - 2048))
sfdisk --quiet --no-reread --no-tell-kernel "$RAW" <<EOF
label: gpt
label-id: $(uuid disk)
start=$BIOS_START, size=$BIOS_SECTORS, type=21686148-6453-6F6E-6744-6964654E6565, uuid=$(uuid p1), name=bios
start=$ESP_START, size=$ESP_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$(uuid p2), name=esp
start=$ROOT_START, size=$ROOT_SECTORS, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$(uuid p3), name=root
EOF

mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -E "offset=$((ROOT_START * 512))" -d "$ROOT" "$RAW" "$((ROOT_SECTORS / 2))k"
mkfs.fat -F 16 -n EFI -C "$TMP/esp.img" "$((ESP_SECTORS / 2))" >/dev/null
mmd -i "$TMP/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$TMP/esp.img" "$TMP/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$TMP/esp.img" of="$RAW" bs=512 seek="$ESP_START" conv=notrunc,sparse status=none

# BIOS: boot.img's code (up to the disk signature, keeping the protective MBR's table) with the
# LBA of core.img at 0x5c, boot drive 0xff (use the BIOS's) at 0x64 and the floppy check at 0x66
# replaced by NOPs; core.img's first sector ends with a blocklist whose start must name the
# sector after it (its length and load segment are set by grub-mkimage).
le64() { local n=$1 i s=''; for ((i = 0; i < 8; i++)); do s+=$(printf '\\x%02x' $(((n >> (8 * i)) & 255))); done; printf '%b' "$s"; }
poke() { dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
cp /usr/lib/grub/i386-pc/boot.img "$TMP/boot.img"
le64 "$BIOS_START" | poke "$TMP/boot.img" $((0x5c))
printf '\xff' | poke "$TMP/boot.img" $((0x64))
printf '\x90\x90' | poke "$TMP/boot.img" $((0x66))
le64 $((BIOS_START + 1)) | poke "$TMP/core.img" $((0x200 - 12))
dd if="$TMP/boot.img" of="$RAW" bs=440 count=1 conv=notrunc status=none
dd if="$TMP/core.img" of="$RAW" bs=512 seek="$BIOS_START" conv=notrunc status=none

qemu-img convert -q -c -O qcow2 -o compression_type=zstd "$RAW" "$OUT/debian.qcow2.tmp"

# Publish: drop the stamp first, replace the files, write the stamp last.
rm -f "$OUT/STAMP"
mv -f "$OUT/debian.qcow2.tmp" "$OUT/debian.qcow2"
mv -f "$TMP/packages.txt" "$OUT/packages.txt"
echo "$STAMP" >"$OUT/STAMP.tmp" && mv -f "$OUT/STAMP.tmp" "$OUT/STAMP"
T2=$(date +%s.%N)
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
log "built $OUT/debian.qcow2 (kernel $KVER, $(wc -l <"$OUT/packages.txt") packages, $(du -h "$OUT/debian.qcow2" | cut -f1) on disk) in $(secs "$T0" "$T2") s (mmdebstrap $(secs "$T0" "$T1") s)"
