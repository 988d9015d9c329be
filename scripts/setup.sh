#!/usr/bin/env bash
# Idempotent setup for building and testing xdplb on a fresh Debian 12 machine.
# Installs only what is missing; takes seconds when everything is already there.
# Stops with a sentence naming what could not be had.
set -euo pipefail

say()  { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Debian packages the tests, the demo and the benchmark use. bird2: the BGP cluster tests run
# their own BIRD in each namespace; a bird.service the package may start in the root namespace
# is left alone (it is independent of the tests). nftables: the live benchmark's DNAT case and
# the L3 ICMP tests' oracle. iputils-ping: pings to VIPs, answered by the data path.
PACKAGES=(iproute2 ethtool procps systemd bird2 nftables iputils-ping)
# Where bpf-linker finds the nightly's libLLVM (must persist across sessions, so not /tmp).
TOOLS_PREFIX="${XDPLB_TOOLS_PREFIX:-/opt/xdplb-tools}"
BPFFS="${XDPLB_BPFFS:-/sys/fs/bpf}"

[ "$(id -u)" -eq 0 ] || fail "xdplb setup needs root (it installs packages and mounts bpffs); run it with sudo."
[ "$(uname -s)" = Linux ] || fail "xdplb needs Linux (XDP is a Linux kernel feature)."
[ -r /sys/kernel/btf/vmlinux ] || say "warning: the kernel exposes no BTF (/sys/kernel/btf/vmlinux); loading may fail."

# 1. Debian packages.
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || fail "packages ${missing[*]} are missing and there is no apt-get to install them."
  say "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    || fail "apt-get update failed; cannot install ${missing[*]}."
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed."
else
  say "Debian packages present: ${PACKAGES[*]}"
fi

# 1b. promtool, which the metrics tests run (`promtool check metrics`). Debian ships it in the
# prometheus package: installed without the recommended exporters, and with service starts
# refused while it installs (a policy-rc.d of our own, only when the machine has none), so no
# Prometheus server starts listening on this machine.
if ! command -v promtool >/dev/null; then
  say "installing promtool (Debian package prometheus; its service is not started)"
  command -v apt-get >/dev/null || fail "promtool is missing and there is no apt-get to install it (Debian package prometheus)."
  # Step 1 refreshes the package lists only when it installs something.
  DEBIAN_FRONTEND=noninteractive apt-get update -qq || fail "apt-get update failed; cannot install prometheus (for promtool)."
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    own_policy=yes
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d; fail "apt-get install prometheus (for promtool) failed."; }
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  command -v promtool >/dev/null || fail "the prometheus package installed no promtool."
else
  say "promtool present"
fi

# 2. Rust toolchains: stable for user space, nightly + rust-src for the eBPF crate (-Z build-std=core).
command -v rustup >/dev/null || fail "rustup is not installed; xdplb needs the stable and nightly Rust toolchains."
rustup toolchain list | grep -q '^nightly' || fail "the nightly Rust toolchain is missing (rustup toolchain install nightly)."
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to the nightly toolchain"
  rustup component add rust-src --toolchain nightly >/dev/null || fail "could not add rust-src to the nightly toolchain."
else
  say "nightly rust-src present"
fi

# 3. bpf-linker, linked against the LLVM inside the nightly toolchain (its major version must match).
llvm_major="$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
[ -n "$llvm_major" ] || fail "could not read the nightly toolchain's LLVM version (rustc +nightly -vV)."
if command -v bpf-linker >/dev/null && bpf-linker --version >/dev/null 2>&1; then
  say "bpf-linker present ($(bpf-linker --version | head -n1))"
else
  nightly_lib="$(rustc +nightly --print sysroot)/lib"
  llvm_so="$(ls "$nightly_lib"/libLLVM.so.* 2>/dev/null | head -n1 || true)"
  [ -n "$llvm_so" ] || fail "the nightly toolchain ships no libLLVM.so in $nightly_lib; bpf-linker cannot be built."
  mkdir -p "$TOOLS_PREFIX/lib"
  ln -sf "$llvm_so" "$TOOLS_PREFIX/lib/libLLVM.so"                 # for linking (-lLLVM)
  ln -sf "$llvm_so" "$TOOLS_PREFIX/lib/$(basename "$llvm_so")"     # for running (SONAME, rpath)
  say "building bpf-linker against LLVM $llvm_major from the nightly toolchain (about a minute)"
  LLVM_PREFIX="$TOOLS_PREFIX" cargo install bpf-linker --version 0.13.0 --locked --no-default-features \
    --features "llvm-$llvm_major" --quiet \
    || fail "cargo install bpf-linker (llvm-$llvm_major) failed; see the output above."
  bpf-linker --version >/dev/null 2>&1 || fail "bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)."
fi

# 4. bpffs for pinning maps and links.
if ! mount | grep -q " $BPFFS type bpf "; then
  say "mounting bpffs at $BPFFS"
  mkdir -p "$BPFFS"
  mount -t bpf bpf "$BPFFS" || fail "could not mount bpffs at $BPFFS."
else
  say "bpffs mounted at $BPFFS"
fi

say "ready"
