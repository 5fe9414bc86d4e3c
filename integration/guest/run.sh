#!/bin/sh
# hivejail guest, stage 2: PID 1 on the guest's root (the host's / read-only
# under a tmpfs overlay), run by the host's /bin/sh. The runner copies this
# file into the results share with guest.env beside it.
#
# Sets up /dev, /tmp, the kernel's module tree, cgroup2 (the only cgroup
# hierarchy: the kernel runs with cgroup_no_v1=all) with every available
# controller enabled in the root's subtree, loopback, and the scratch disk;
# prints the kernel version and the enabled controllers; runs the command in
# the repository; writes its exit status to the share and powers off.
S=/hivejail-share
. "$S/guest.env"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb

say() { echo "hivejail-vm: $*"; }

finish() {
    echo "$1" >"$S/exit_code.tmp" && mv "$S/exit_code.tmp" "$S/exit_code"
    dmesg >"$S/dmesg.txt" 2>/dev/null
    cd /
    umount "$HIVEJAIL_SCRATCH_DIR" 2>/dev/null
    sync
    "$HJ_BUSYBOX" poweroff -f
    exit "$1"   # PID 1 exiting panics the kernel; with panic=-1 and -no-reboot QEMU exits
}

under() {  # under DIR PATH...: true if one of the paths lies in DIR
    d=$1; shift
    for p in "$@"; do case "$p/" in "$d"/*) return 0;; esac; done
    return 1
}

# /dev: devtmpfs came from stage 1.
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

# Fresh /tmp and /run, unless the repository, Python or the module tree lie there.
for dm in /tmp:1777 /run:0755; do
    d=${dm%:*}
    if under "$d" "$HJ_REPO" "$HJ_PYTHON" "$HJ_MODULES"; then
        say "keeping the host's $d (under the overlay): the checkout lies there"
    else
        mount -t tmpfs -o "mode=${dm#*:},nosuid,nodev" tmpfs "$d"
    fi
done

# The guest kernel's modules (the host's /lib/modules has none for it).
mkdir -p "/lib/modules/$HJ_RELEASE"
mount --bind -o ro "$HJ_MODULES" "/lib/modules/$HJ_RELEASE" || say "cannot bind the module tree"

# cgroup2 only, every controller enabled for the root's children.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup \
    || mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup \
    || { say "cannot mount cgroup2"; finish 3; }
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || say "cannot enable the $c controller"
done

ip link set lo up 2>/dev/null || "$HJ_BUSYBOX" ip link set lo up
hostname hivejail-vm 2>/dev/null

# The scratch disk (ext4, made by the runner) for io.max tests.
if [ -b "$HIVEJAIL_SCRATCH_DEV" ]; then
    mkdir -p "$HIVEJAIL_SCRATCH_DIR"
    mount -t ext4 "$HIVEJAIL_SCRATCH_DEV" "$HIVEJAIL_SCRATCH_DIR" || say "cannot mount the scratch disk"
    chmod 1777 "$HIVEJAIL_SCRATCH_DIR"
else
    say "no scratch disk at $HIVEJAIL_SCRATCH_DEV"
fi

# From here on only critical kernel messages reach the console (OOM kills
# would interleave with the test output); all of dmesg goes to the share.
[ -n "$HJ_QUIET" ] && echo 3 >/proc/sys/kernel/printk

say "kernel $(uname -r) ($(uname -v))"
say "cgroup controllers enabled: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
say "cgroup mounts: $(awk '$3 ~ /^cgroup/ {printf "%s %s ", $3, $2}' /proc/mounts)"
say "cpus $(nproc), memory $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"

export HIVEJAIL_VM=1 HIVEJAIL_VM_KERNEL="$HJ_RELEASE" HIVEJAIL_VM_SHARE="$S"
export HIVEJAIL_SCRATCH_DEV HIVEJAIL_SCRATCH_DIR
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
cd "$HJ_REPO" || { say "no repository at $HJ_REPO"; finish 3; }
say "running: $HJ_CMD"
# Through a pipe, so the command's output is a log's (no \r progress
# redrawing on the console tty); dash has no pipefail, hence the rc file.
{ /bin/sh -c "$HJ_CMD" </dev/null 2>&1; echo $? >/.hivejail-rc; } | cat
rc=$(cat /.hivejail-rc 2>/dev/null || echo 125)
say "command exited with status $rc"
finish "$rc"
