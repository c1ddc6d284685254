#!/usr/bin/env bash
# Outputs are placed by the system calls that make them safe, seen with strace: a new output
# takes its name with RENAME_NOREPLACE (an output that appears meanwhile is refused, not
# overwritten), --force swaps a folder in with RENAME_EXCHANGE (its name never points at
# nothing), and the folder holding each renamed output is fsynced after the rename (a power loss
# cannot undo it). Skips (77) where strace is missing or may not trace.
# Usage: durable_outputs.sh REVMERGE SOURCE_DIR WORK_DIR
set -euo pipefail
revmerge=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
adapters=("$src"/examples/adapters/*)
fail() { echo "FAIL: $*"; exit 1; }
command -v strace >/dev/null || { echo "SKIP: strace is not installed (tools/bootstrap.sh installs it)"; exit 77; }
strace -qq -e trace=none true 2>/dev/null || { echo "SKIP: strace may not trace here (ptrace refused)"; exit 77; }

traced() {  # traced LOG ARGS…: runs revmerge under strace, the renames and fsyncs with fd paths
  local log=$1; shift
  # LeakSanitizer cannot run under ptrace; a sanitizer build checks leaks in its other tests.
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" strace -f -y -qq -e trace=rename,renameat,renameat2,fsync,fdatasync -o "$log" "$revmerge" "$@" >/dev/null
}
# The line of the first call in LOG matching PATTERN (0 when none).
line_of() { grep -n -m1 -E "$2" "$1" | cut -d: -f1 || true; }

traced "$work/new.log" merge -q --basis 2 --out "$work/bundle" "${adapters[@]}"
place=$(line_of "$work/new.log" "renameat2\(.*\"$work/bundle\", RENAME_NOREPLACE\)")
[ -n "$place" ] || { cat "$work/new.log"; fail "the new bundle was not placed with RENAME_NOREPLACE"; }
sync=$(grep -n -E "fsync\([0-9]+<$work>\)" "$work/new.log" | cut -d: -f1 | tail -1 || true)
[ -n "$sync" ] && [ "$sync" -gt "$place" ] || { cat "$work/new.log"; fail "the bundle's folder was not synced after the rename"; }
grep -q -E "renameat2\(.*\"$work/\.bundle\.revmerge-tmp-[^/\"]*/manifest.json\", RENAME_NOREPLACE\)" "$work/new.log" \
  || { cat "$work/new.log"; fail "the files inside the bundle were not placed with RENAME_NOREPLACE"; }
grep -q -E "fsync\([0-9]+<$work/\.bundle\.revmerge-tmp-[^>]*>\)" "$work/new.log" \
  || { cat "$work/new.log"; fail "the bundle's own folder was not synced"; }
echo "new output: RENAME_NOREPLACE, folders synced"

traced "$work/force.log" merge -q --basis 3 --force --out "$work/bundle" "${adapters[@]}"
grep -q -E "renameat2\(.*\"$work/bundle\", RENAME_EXCHANGE\)" "$work/force.log" \
  || { cat "$work/force.log"; fail "--force did not swap the bundle in with RENAME_EXCHANGE"; }
! grep -q "revmerge-old" "$work/force.log" || fail "--force still moves the old bundle aside first"
! ls -a "$work" | grep -q "revmerge-tmp\|revmerge-old" || fail "temporary folders left in $work: $(ls -a "$work")"
"$revmerge" inspect "$work/bundle" | grep -q "basis 3," || fail "the replaced bundle is not the new one"
echo "--force: RENAME_EXCHANGE, old bundle removed"
