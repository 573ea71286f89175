#!/usr/bin/env bash
# Prints the Debian mirror the system's apt sources already use (deb822 debian.sources first, then
# sources.list, skipping the security archive), or deb.debian.org when neither names one. The
# fetch scripts point a private apt state at it, so the system's configuration is never touched.
set -euo pipefail
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)
fi
echo "${mirror:-http://deb.debian.org/debian}"
