# Shared by the set-up scripts and the demo (sourced, never run): quiet long steps.
#
# run_logged WHAT LOG COMMAND...  runs COMMAND with all its output in the file LOG. On a terminal
# one status line (WHAT, the seconds so far, the log's latest line) overwrites itself; in a pipe
# nothing is shown until the end. Then one line: done (with the log's path), or the log's tail.

note() { printf '%s\n' "$*" >&2; }

run_logged() {
  local what=$1 log=$2 started=$SECONDS rc=0 pid latest width
  shift 2
  mkdir -p "$(dirname "$log")"
  if [ -t 2 ]; then
    "$@" </dev/null >"$log" 2>&1 &
    pid=$!
    width=$(( $(tput cols 2>/dev/null || echo 80) - ${#what} - 12 ))
    while kill -0 "$pid" 2>/dev/null; do
      latest=$(tail -n 1 "$log" 2>/dev/null | tr -d '\r\033' | cut -c "1-$(( width > 10 ? width : 10 ))")
      printf '\r\033[K%s … %ds  \033[2m%s\033[0m' "$what" $(( SECONDS - started )) "$latest" >&2
      sleep 0.5
    done
    wait "$pid" || rc=$?
    printf '\r\033[K' >&2
  else
    "$@" </dev/null >"$log" 2>&1 || rc=$?
  fi
  if [ "$rc" -eq 0 ]; then
    note "$what: done in $(( SECONDS - started )) s (log: $log)"
    return 0
  fi
  note "$what failed (exit $rc). The end of its log, $log:"
  tail -n 25 "$log" | sed 's/^/  | /' >&2
  return "$rc"
}
