"""hivejail's VM integration runner.

`python3 -m integration` builds (or reuses) a small guest — Debian's own
kernel package, unpacked, plus a busybox initramfs — boots it under QEMU's
software emulation with the host's / shared read-only over 9p, and runs the
privileged test set under integration/tests as root inside it, on a kernel
whose only cgroup hierarchy is cgroup2 with the cpu, memory, pids and io
controllers enabled.

Modules: assets (the cached guest kernel and initramfs), runner (the CLI,
QEMU and the guest's results), guest/ (the guest's two init stages).
"""
