#!/bin/sh
# Install everything memtrace, its lab and its tests need on a fresh Debian 12 machine, as
# root: Debian packages (QEMU, the two lab kernels with headers, bcc), the .venv at the repo
# root, and the lab's cached initramfs images. Safe to run again: it only does what is missing.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: must run as root (it installs Debian packages); try: sudo $0" >&2
    exit 2
fi

# bcc comes from Debian (python3-bpfcc); PyPI's "bcc" is an unrelated library. chromium and
# a font run the HTML report's browser test (headless; no display needed).
PACKAGES="qemu-system-x86 initramfs-tools kmod pciutils
  linux-image-amd64 linux-headers-amd64 linux-image-6.12-amd64 linux-headers-6.12-amd64
  python3-bpfcc bpfcc-tools bpftool python3-venv python3-pip chromium fonts-dejavu-core"
# The .deb's dependencies (scripts/build-deb), so that its test installs it without the
# network and runs it on Debian's python3 alone; groff checks the generated man pages and
# man-db shows the installed ones.
PACKAGES="$PACKAGES python3-tabulate python3-psutil python3-pyroute2 groff-base man-db"
# The fleet test (tests/fleet) runs Prometheus and node_exporter's binaries itself on
# loopback ports; the exposition's unit tests parse with the official Python client.
PACKAGES="$PACKAGES prometheus prometheus-node-exporter python3-prometheus-client"
# Debian 12's JSON decoder for traces where orjson (the venv's speed-up) is absent: the
# tests check that both decoders give the answers json gives.
PACKAGES="$PACKAGES python3-ujson"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup.sh: installing$missing"
    apt-get update -q
    # No service a package ships (prometheus, node_exporter on :9090, :9100) may start here:
    # policy-rc.d's 101 means "not now" to invoke-rc.d and deb-systemd-invoke.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# The venv sees Debian's bcc through --system-site-packages.
if ! .venv/bin/python -c 'import memtrace.tools.cli, tabulate, psutil, pyroute2, pytest, bcc' 2>/dev/null; then
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test,fast]'
fi
# Test and build tools added to .[test] later (vermin, shtab, hypothesis) reach an existing venv too.
.venv/bin/python -c 'import vermin, shtab, xdist, mypy, hypothesis, orjson' 2>/dev/null \
    && [ -x .venv/bin/ruff ] \
    || .venv/bin/pip install -q --disable-pip-version-check -e '.[test,fast]'

.venv/bin/memtrace lab --prepare
echo "setup.sh: done; .venv/bin/memtrace is ready"
