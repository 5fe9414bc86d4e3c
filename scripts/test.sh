#!/usr/bin/env bash
# Run hivejail's tests as root: the host suite (real namespaces, cgroups,
# seccomp, nftables; root and rootless), then the VM suite (a cgroup-v2-only
# guest kernel under QEMU). Run scripts/setup.sh first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${HIVEJAIL_VENV:-/opt/hivejail/venv}
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root" >&2; exit 1; }
[ -x "$venv/bin/python" ] || { echo "test.sh: $venv missing: run scripts/setup.sh first" >&2; exit 1; }
cd "$here"
export PYTHONDONTWRITEBYTECODE=1
echo "== host suite ($(uname -r))"
"$venv/bin/python" -m pytest -p no:cacheprovider -rfEs -q tests "$@"
if [ "${HIVEJAIL_SKIP_VM:-0}" = 1 ]; then
  echo "== VM suite skipped (HIVEJAIL_SKIP_VM=1)"
else
  echo "== VM suite (cgroup v2 guest)"
  "$venv/bin/python" -m integration
fi
