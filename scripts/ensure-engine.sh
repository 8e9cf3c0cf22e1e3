#!/usr/bin/env bash
# Make sure a Docker engine answers. If none does and we are root, install Debian's docker.io
# when dockerd is missing, clear a stale pid file, start dockerd and wait for it.
# Prints the pid of a dockerd it started to the file named by $1 (if given), so that the caller
# can stop exactly that one. Exits non-zero with a reason when no engine can be had.
set -euo pipefail
pidfile=${1:-}

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-engine: no Docker engine answers, and starting one needs root." >&2
  echo "hint: start it (sudo systemctl start docker, or sudo dockerd &) or set DOCKER_HOST." >&2
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-engine: installing Debian's docker.io" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid  # left by a dockerd that was killed
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "ensure-engine: starting dockerd (log: /var/log/dockerd.log)" >&2
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  started=$!
  [ -n "$pidfile" ] && echo "$started" >"$pidfile"
fi
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "ensure-engine: dockerd did not answer within 60 s; see /var/log/dockerd.log:" >&2
tail -20 /var/log/dockerd.log >&2 || true
exit 1
