#!/bin/sh
# Make a stand-in for the `python:3.11-slim` base image from Debian's own packages, for machines
# that reach the Debian and Python package indexes but no container registry (docker/test-image.sh
# uses it when no registry answers). Debian 12 "bookworm" minbase + python3 (3.11), python3-venv
# (ensurepip for `python -m venv`), python-is-python3 (`python`), ca-certificates; merged /usr
# without usrmerge (no perl); like debian:bookworm-slim: no documentation, man pages or locales
# (dpkg path-exclude, kept for later installs), no apt caches, no recommended packages. About
# 134 MB, one to two minutes (mmdebstrap; run as root).
#
# Usage: make-base.sh OUTPUT.tar        then e.g. `podman import OUTPUT.tar NAME` (test-image.sh does)
# Needs: mmdebstrap, and eatmydata (optional: dpkg skips its fsyncs, faster).
set -eu
out=$1
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
hooks=/usr/share/mmdebstrap/hooks
speed=""
if command -v eatmydata >/dev/null && [ -d "$hooks/eatmydata" ]; then
    speed="--hook-dir=$hooks/eatmydata"
fi
# the chroot is made in memory where there is room: extracting the packages on a busy disk is the slow part
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 1000000 ]; then
    export TMPDIR=/dev/shm
fi
# shellcheck disable=SC2086  # $speed is one option or none
mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --hook-dir="$hooks/merged-usr" $speed --dpkgopt=force-unsafe-io \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --aptopt='APT::Install-Recommends "false"' \
    --aptopt='Dir::Cache::pkgcache ""' --aptopt='Dir::Cache::srcpkgcache ""' \
    --aptopt='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; }' \
    bookworm "$out" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main"
