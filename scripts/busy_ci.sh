#!/usr/bin/env bash
# The CI run on a busy machine: a fresh clone of this repository's HEAD (with ../shared copied
# beside it, as CI has it) runs `bash .ci/run` while two busy processes load the CPUs.
#
#   scripts/busy_ci.sh [RUNS]     RUNS fresh clones, one after the other (default 1)
#
# Each run prints its result and wall time; the exit status is 0 only if every run passed. The
# busy processes are started and stopped by PID (on any exit); nothing else is signalled. Logs and
# clones are kept under the printed temp dir when a run fails (KEEP=1 keeps them always).
set -euo pipefail

runs="${1:-1}"
case "$runs" in
'' | *[!0-9]* | 0)
    echo "usage: $0 [RUNS]  (RUNS: a positive integer)" >&2
    exit 2
    ;;
esac

repo="$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)"
shared="$(dirname "$repo")/shared"
work="$(mktemp -d "${TMPDIR:-/tmp}/nasprune-busy-ci.XXXXXX")"
busy_pids=()
all_passed=0 # set once every run has passed; until then (failure, interrupt) the logs are kept

cleanup() {
    local pid
    for pid in "${busy_pids[@]}"; do
        kill -- "$pid" 2>/dev/null || true
    done
    for pid in "${busy_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "$all_passed" == 1 && "${KEEP:-0}" != 1 ]]; then
        rm -rf "$work"
    else
        echo "logs and clones kept in $work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in 1 2; do
    python3 -c "while True: pass" &
    busy_pids+=("$!")
done
echo "busy processes: ${busy_pids[*]} (on $(nproc) cores); HEAD $(git -C "$repo" rev-parse --short HEAD)"

failed=0
results=()
for ((i = 1; i <= runs; i++)); do
    run_dir="$work/run$i"
    mkdir -p "$run_dir"
    git clone --quiet "$repo" "$run_dir/main"
    if [[ -d "$shared" ]]; then
        cp -a "$shared" "$run_dir/shared"
    fi
    log="$run_dir/ci.log"
    echo "run $i/$runs: bash .ci/run in $run_dir/main (log: $log)"
    start=$(date +%s)
    set +e
    (cd "$run_dir/main" && bash .ci/run) >"$log" 2>&1
    rc=$?
    set -e
    seconds=$(($(date +%s) - start))
    if [[ $rc == 0 ]]; then
        verdict="PASS"
    else
        verdict="FAIL (exit $rc)"
        failed=1
    fi
    summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed|errors?)\b' "$log" | tail -n 1 || true)"
    results+=("run $i: $verdict in $((seconds / 60))m$((seconds % 60))s; pytest: ${summary:-no summary line}")
    echo "${results[-1]}"
    if [[ $rc != 0 ]]; then
        grep -E '^(FAILED|ERROR) ' "$log" || tail -n 30 "$log"
    fi
done

echo "---"
printf '%s\n' "${results[@]}"
if [[ $failed == 0 ]]; then
    all_passed=1
fi
exit "$failed"
