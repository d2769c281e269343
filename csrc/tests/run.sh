#!/usr/bin/env bash
# Builds the channel core (csrc/chan.c, ring.c, bcast.c) with its C stress test (stress.c)
# and runs it three ways: plain -O2 -Werror, ThreadSanitizer, AddressSanitizer + UBSan. Also
# compiles the core at -O0 -g -Werror with every warning we care for and, when python3 has
# cffi, builds it through chan.cdef in API mode (the same path the package build takes).
# Any failure or sanitizer report makes the script exit non-zero.
#
#   csrc/tests/run.sh                 everything (about a minute on 2 cores)
#   SHM_STRESS_SCALE=4 run.sh         scale iteration counts (plain x3, TSan x0.4, ASan x1)
#   CC=clang run.sh                   another compiler
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
csrc=$(dirname "$here")
cc=${CC:-gcc}
scale=${SHM_STRESS_SCALE:-1}
out=$(mktemp -d "${TMPDIR:-/tmp}/shm_chan_test.XXXXXX")
trap 'rm -rf "$out"' EXIT

warn=(-std=c11 -Wall -Wextra -Werror -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion)
core=("$csrc/chan.c" "$csrc/ring.c" "$csrc/bcast.c")
srcs=("$here/stress.c" "${core[@]}")
mul() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%g", a * b }'; }
step() { printf '\n== %s\n' "$*"; }
t0=$SECONDS

step "compile the core and seg.c: -O0 -g and -O2, every warning an error"
for f in "${core[@]}" "$csrc/seg.c"; do
    "$cc" "${warn[@]}" -O0 -g -c "$f" -o "$out/$(basename "$f" .c)_O0.o"
    "$cc" "${warn[@]}" -O2 -c "$f" -o "$out/$(basename "$f" .c)_O2.o"
done
echo ok

step "plain -O2 (scale $(mul "$scale" 3))"
"$cc" -std=c11 -O2 -g -Wall -Wextra -Werror -pthread "${srcs[@]}" -o "$out/stress"
SHM_STRESS_SCALE=$(mul "$scale" 3) "$out/stress"

step "ThreadSanitizer (scale $(mul "$scale" 0.4))"
# (chan_impl.h silences gcc's -Wtsan about atomic_thread_fence itself: see there.)
"$cc" -std=c11 -O1 -g -Wall -Wextra -Werror -pthread -fsanitize=thread "${srcs[@]}" \
    -o "$out/stress_tsan"
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1" \
    SHM_STRESS_SCALE=$(mul "$scale" 0.4) setarch "$(uname -m)" -R "$out/stress_tsan"

step "AddressSanitizer + UBSan (scale $(mul "$scale" 1))"
# its fuzz test flips header, control block, participant and slot bytes between calls
"$cc" -std=c11 -O1 -g -Wall -Wextra -Werror -pthread -fsanitize=address,undefined \
    -fno-sanitize-recover=all -fno-omit-frame-pointer "${srcs[@]}" -o "$out/stress_asan"
ASAN_OPTIONS="halt_on_error=1 detect_leaks=1 abort_on_error=0" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    SHM_STRESS_SCALE=$(mul "$scale" 1) "$out/stress_asan"

step "cffi API-mode build through chan.cdef"
if python3 -c 'import cffi' 2>/dev/null; then
    python3 "$here/check_cdef.py" "$out/cffi"
else
    echo "skipped: python3 has no cffi"
fi

printf '\nrun.sh: all passed in %ds\n' $((SECONDS - t0))
