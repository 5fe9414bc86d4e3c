#!/usr/bin/env bash
# Install what hivejail and its tests need on a fresh Debian 12 machine, as root:
# Debian packages, and a venv at $HIVEJAIL_VENV (default /opt/hivejail/venv) made
# from Debian's /usr/bin/python3 so an unprivileged user can run it too.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${HIVEJAIL_VENV:-/opt/hivejail/venv}
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (it installs Debian packages)" >&2; exit 1; }

debs=(nftables uidmap bubblewrap hyperfine jq nodejs iproute2 libseccomp2 python3-venv slirp4netns
      qemu-system-x86 busybox-static kmod cpio e2fsprogs util-linux procps)
export DEBIAN_FRONTEND=noninteractive
# Always refresh the lists: the VM suite downloads Debian's current kernel package.
apt-get update -qq
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
# Non-editable install: the checkout may sit in a folder only root can read.
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$here" >/dev/null
chmod -R a+rX "$(dirname "$venv")"
echo "setup: ok ($("$venv/bin/python" --version), venv $venv)"
