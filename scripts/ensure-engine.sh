#!/usr/bin/env bash
# Make sure a Docker engine answers. As root: install Debian's docker.io when it is missing, make
# sure the `docker` group exists (dockerd hands its socket to that group, so that its members may
# use the engine without root), clear a stale pid file, start dockerd and wait for it.
# As anyone else: never attempt any of that (no sudo prompt); say exactly what to run as root.
# Prints the pid of a dockerd it started to the file named by $1 (if given), so that the caller
# can stop exactly that one. Exits non-zero with a reason when no engine can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
pidfile=${1:-}
logs=${CARGOHOLD_LOG_DIR:-build/logs}
user=$(id -un)
root=false
[ "$(id -u)" = 0 ] && root=true

if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! $root; then
  if ! command -v docker >/dev/null 2>&1; then
    note "Docker is not installed, and installing it needs root. As root, once:"
    note "    apt-get install -y docker.io && usermod -aG docker $user"
    note "then log in again (so that the docker group applies) and run this again."
    exit 1
  fi
  problem=$(docker info 2>&1 >/dev/null || true)
  if grep -qi "permission denied" <<<"$problem"; then
    sock=${DOCKER_HOST:-unix:///var/run/docker.sock}
    sock=${sock#unix://}
    if id -nG | tr ' ' '\n' | grep -qx docker; then
      # In the group already: the socket itself is not the group's (dockerd started before the
      # group existed, or was told another one).
      note "The Docker engine runs and $user is in the docker group, but its socket is not the group's:"
      note "    $(stat -c '%U:%G %A' "$sock" 2>/dev/null || echo '?') $sock"
      note "As root:  chgrp docker $sock && chmod 660 $sock"
      note "(lasting: restart dockerd now that the docker group exists, e.g. systemctl restart docker)"
    elif getent group docker | cut -d: -f4 | tr ',' '\n' | grep -qx "$user"; then
      note "$user was added to the docker group after this login. Log in again (or start a"
      note "shell with: newgrp docker) and run this again."
    else
      note "The Docker engine runs, but $user may not use it (not in the docker group). As root:"
      note "    usermod -aG docker $user"
      note "then log in again (or start a shell with: newgrp docker) and run this again."
    fi
  elif [ -n "${DOCKER_HOST:-}" ]; then
    note "No Docker engine answers at DOCKER_HOST=$DOCKER_HOST:"
    note "    $(head -n 1 <<<"$problem")"
    note "Start that engine, or unset DOCKER_HOST to use the local one."
  elif ! command -v dockerd >/dev/null 2>&1; then
    note "No Docker engine runs here, and installing one needs root. As root, once:"
    note "    apt-get install -y docker.io && usermod -aG docker $user"
  else
    note "No Docker engine answers, and starting one needs root. As root:"
    note "    systemctl start docker        (without systemd: dockerd >/var/log/dockerd.log 2>&1 &)"
  fi
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  run_logged "ensure-engine: installing Debian's docker.io" "$logs/apt-docker.log" \
    bash -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io'
fi
# dockerd gives its socket to the group `docker` only when that group exists when it starts.
getent group docker >/dev/null || groupadd --system docker
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid  # left by a dockerd that was killed
fi
# The default engine is the one whose pid file is /var/run/docker.pid: a private dockerd that a
# test runs on its own socket (tests/engines.py) is not it, so `pgrep dockerd` would lie.
if ! { [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
  note "ensure-engine: starting dockerd (log: /var/log/dockerd.log)"
  nohup dockerd --group docker >/var/log/dockerd.log 2>&1 &
  started=$!
  [ -n "$pidfile" ] && echo "$started" >"$pidfile"
fi
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
note "ensure-engine: dockerd did not answer within 60 s. The end of /var/log/dockerd.log:"
tail -n 20 /var/log/dockerd.log | sed 's/^/  | /' >&2 || true
exit 1
