#!/usr/bin/env bash
# System packages the tests need beyond the venv; idempotent, installs only what is missing.
#   sshd, rsync, nc: tests/multinode/test_ray_up_local.py runs `ray up` over SSH to this machine
#   (its own sshd on a loopback port, reached through `nc` as the ProxyCommand; rsync for file_mounts).
#   h2load: the load generator of loadtests/bench_protocols.py (REST and gRPC alike), run for real by
#   tests/unit/test_h2load.py.
#   wrk: the load generator of the serving benchmarks; tests/unit/test_bench_overload.py runs its overload
#   script for real (a refused connection waits out Retry-After).
#   tcpdump: times the overload benchmark's probe on the loopback wire (loadtests/wire_timing.py), run for real
#   by tests/unit/test_wire_timing.py.
#   chromium: the status page's browser tests (tests/browser.py drives Debian's chromium with playwright).
# Needs root (or sudo) and Debian/Ubuntu's apt; elsewhere it says what is missing and leaves it to you.
set -euo pipefail

declare -A needs=([/usr/sbin/sshd]=openssh-server [rsync]=rsync [nc]=netcat-openbsd [h2load]=nghttp2-client [wrk]=wrk [tcpdump]=tcpdump [/usr/bin/chromium]=chromium)
missing=()
for tool in "${!needs[@]}"; do
  if [[ "$tool" == /* ]]; then [[ -x "$tool" ]] || missing+=("${needs[$tool]}")
  else command -v "$tool" >/dev/null 2>&1 || missing+=("${needs[$tool]}"); fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_system_packages: missing ${missing[*]} and no apt-get here; install them yourself" >&2
  exit 1
fi
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)

# The tests start their own sshd; the package must not start the system one (a daemon on port 22).
# Docker images ship a policy-rc.d that refuses service starts; add one for this install only if absent.
policy=/usr/sbin/policy-rc.d
added_policy=
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee $policy >/dev/null
  "${sudo[@]}" chmod 755 $policy
  added_policy=1
fi
cleanup() { if [[ -n $added_policy ]]; then "${sudo[@]}" rm -f $policy; fi; }
trap cleanup EXIT

echo "ensure_system_packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
