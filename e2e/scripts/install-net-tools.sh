#!/usr/bin/env bash
# Installs the Debian packages that the DHCP/TFTP protocol tests and benchmarks of
# ironpool-agents use as real peers: dhclient, busybox udhcpc, dhcrelay, ISC Kea with
# perfdhcp (shipped by kea-admin), tftpd-hpa, atftp, tftp-hpa, Debian's iPXE binaries,
# iproute2 (ip netns), and for the benchmarks nginx-light (the HTTP peer), dnsmasq-base
# (the DHCP+TFTP peer of the boot-storm benchmark, what Metal3 ships; the binary only, no
# service), taskset and tcmalloc (preloaded into perfdhcp, whose own allocations cap its
# rate). Idempotent:
# apt-get runs only when a command or file is missing.
set -euo pipefail

# command-or-file => package
declare -A need=(
  [/sbin/dhclient]=isc-dhcp-client
  [/bin/busybox]=busybox
  [/usr/sbin/dhcrelay]=isc-dhcp-relay
  [/usr/sbin/kea-dhcp4]=kea-dhcp4-server
  [/usr/sbin/perfdhcp]=kea-admin
  [/usr/sbin/in.tftpd]=tftpd-hpa
  [/usr/bin/atftp]=atftp
  [/usr/bin/tftp]=tftp-hpa
  [/usr/lib/ipxe/undionly.kpxe]=ipxe
  [/usr/bin/curl]=curl
  [/sbin/ip]=iproute2
  [/usr/sbin/nginx]=nginx-light
  [/usr/sbin/dnsmasq]=dnsmasq-base
  [/usr/bin/taskset]=util-linux
  ["/usr/lib/$(uname -m)-linux-gnu/libtcmalloc_minimal.so.4"]=libtcmalloc-minimal4
)

missing=()
for path in "${!need[@]}"; do
  # /sbin and /bin are symlinks into /usr on merged-/usr systems; test both spellings.
  alt="/usr${path}"
  if [[ ! -e "$path" && ! -e "$alt" ]]; then
    missing+=("${need[$path]}")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-net-tools: all present"
  exit 0
fi

echo "install-net-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if [[ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
# The Debian packages start daemons that would hold ports 67/69 in the root namespace;
# tests and benchmarks start their own instances inside network namespaces (nginx: the
# HTTP benchmark starts its own on a free loopback port).
for svc in nginx tftpd-hpa isc-dhcp-relay kea-dhcp4-server kea-ctrl-agent kea-dhcp6-server kea-dhcp-ddns-server; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  if [[ -x /etc/init.d/$svc ]]; then /etc/init.d/$svc stop >/dev/null 2>&1 || true; fi
done
echo "install-net-tools: done"
