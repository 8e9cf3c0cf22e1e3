#!/usr/bin/env bash
# The main job, end to end: train the digits network in a container, delete the container with
# `docker rm -f` in mid-training, show what died with it and what did not, run again, show it
# resumed from the latest checkpoint, and keep the trained model on the host.
# `make demo` runs it in the project's environment (PYTHON); run by hand it uses ../../.venv.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd -P)
source "$root/scripts/lib.sh"
venv=${VENV:-.venv}
case $venv in /*) ;; *) venv=$root/$venv ;; esac
PYTHON=${PYTHON:-$venv/bin/python}
logs=${CARGOHOLD_LOG_DIR:-$root/build/logs}
if ! "$PYTHON" -c "import cargohold, numpy" 2>/dev/null; then
  echo "demo: $PYTHON has no cargohold; run \`make demo\` at the repository's root (it makes .venv)" >&2
  exit 1
fi
CARGOHOLD=("$PYTHON" -m cargohold)
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
  fail() { printf '\033[31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }
else
  step() { printf '\n== %s\n' "$*"; }
  fail() { printf 'demo failed: %s\n' "$*" >&2; exit 1; }
fi
started=$(date +%s)

step "1. The dataset: generated on the host into ./data (bound read-only into the job)"
if [ -f data/digits.npz ]; then
  echo "data/digits.npz exists; keeping it"
else
  run_logged "generating 28,000 digit images" "$logs/demo-dataset.log" "$PYTHON" make_dataset.py
fi
# The names come from cargohold.toml (one place), not from this script.
read -r PROJECT VOLUME < <("${CARGOHOLD[@]}" plan --json | "$PYTHON" -c '
import json, sys
plan = json.load(sys.stdin)
print(plan["project"], next(s["source"] for s in plan["stores"] if s["kind"] == "checkpoints"))') \
  || fail "cargohold plan cannot read cargohold.toml (its message is above)"
CONTAINER=$PROJECT-train

step "2. A fresh start: no container, no checkpoint volume, no artifacts from an earlier demo"
docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
docker volume rm "$VOLUME" >/dev/null 2>&1 || true
rm -rf artifacts
"${CARGOHOLD[@]}" plan

step "3. Train in the background: cargohold run -d"
CONTAINER=$("${CARGOHOLD[@]}" run -d)
echo "$CONTAINER"

step "4. Wait for two checkpoints"
# As long as the job runs (a busy machine trains slowly), at most ten minutes.
saved=0
for _ in $(seq 600); do
  saved=$(docker logs "$CONTAINER" 2>/dev/null | grep -c "checkpoint saved" || true)
  [ "$saved" -ge 2 ] && break
  [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" = true ] || break
  sleep 1
done
if [ "$saved" -lt 2 ]; then
  docker logs "$CONTAINER" 2>&1 | tail -n 15 | sed 's/^/  | /' >&2
  fail "the job saved $saved checkpoint(s) in time (the end of its log is above)"
fi
docker logs "$CONTAINER" 2>&1 | tail -n 3
echo "-- in the container's own writable layer: /tmp/run-log.txt"
docker exec "$CONTAINER" cat /tmp/run-log.txt | tail -n 2

step "5. Disaster: docker rm -f $CONTAINER, in mid-training"
docker rm -f "$CONTAINER"
if docker cp "$CONTAINER:/tmp/run-log.txt" - >/dev/null 2>&1; then
  fail "the container's layer survived?"
fi
echo "-- the run log in the container's layer is gone with it: $(docker cp "$CONTAINER:/tmp/run-log.txt" - 2>&1 | head -n 1)"
echo "-- the checkpoints in volume $VOLUME are not:"
"${CARGOHOLD[@]}" volume files "$VOLUME"

step "6. Run again: cargohold run resumes from the latest valid checkpoint"
# On a terminal a status line follows the epochs; the whole training log goes to a file.
log=$logs/demo-train.log
run_logged "training, resumed" "$log" "${CARGOHOLD[@]}" run || fail "the second run failed"
grep "^resumed from epoch" "$log" || fail "the second run did not resume"
echo "..."
tail -n 4 "$log"
resumed=$(grep "^resumed from epoch" "$log" | awk '{print $4}')

step "7. The trained model, on the host, owned by $(id -un)"
ls -l artifacts/
[ -f artifacts/model.npz ] || fail "no model in examples/digits/artifacts"
[ "$(stat -c %u artifacts/model.npz)" = "$(id -u)" ] || fail "the model is not owned by $(id -un)"
accuracy=$(sed 's/.*: \([0-9.]*\).*/\1/' artifacts/metrics.json)
ok='demo ok'
[ -t 1 ] && ok=$'\033[32mdemo ok\033[0m'
printf '\n%s: resumed from epoch %s after docker rm -f; held-out accuracy %s; ' \
  "$ok" "$resumed" "$accuracy"
printf 'model in examples/digits/artifacts/model.npz; %s s\n' "$(( $(date +%s) - started ))"
