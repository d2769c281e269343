#!/usr/bin/env bash
# Builds csrc/ring.c and csrc/bcast.c with their C stress tests (ring_stress,
# bcast_stress) and runs each three ways:
#   plain -O2 -Werror, ThreadSanitizer, AddressSanitizer + UBSan.
# Also compiles ring.c and bcast.c at -O0 -g -Werror and, when python3 has cffi, builds ring.c
# through ring.cdef in API mode (the same path the package build takes).
# Any failure or sanitizer report makes the script exit non-zero.
#
#   csrc/tests/run.sh                 everything (about 1 minute on 2 cores)
#   SHM_RING_STRESS_SCALE=4 run.sh    scale iteration counts (plain x3, TSan x0.4, ASan x1)
#   CC=clang run.sh                   another compiler
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
csrc=$(dirname "$here")
cc=${CC:-gcc}
scale=${SHM_RING_STRESS_SCALE:-1}
out=$(mktemp -d "${TMPDIR:-/tmp}/shm_ring_test.XXXXXX")
trap 'rm -rf "$out"' EXIT

warn=(-std=c11 -Wall -Wextra -Werror -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion)
srcs=("$here/ring_stress.c" "$csrc/ring.c")
bsrcs=("$here/bcast_stress.c" "$csrc/bcast.c" "$csrc/ring.c")
mul() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%g", a * b }'; }
step() { printf '\n== %s\n' "$*"; }
t0=$SECONDS

step "compile ring.c, bcast.c: -O0 -g and -O2 -Werror"
"$cc" "${warn[@]}" -O0 -g -c "$csrc/ring.c" -o "$out/ring_O0.o"
"$cc" "${warn[@]}" -O2 -c "$csrc/ring.c" -o "$out/ring_O2.o"
"$cc" "${warn[@]}" -O0 -g -c "$csrc/bcast.c" -o "$out/bcast_O0.o"
"$cc" "${warn[@]}" -O2 -c "$csrc/bcast.c" -o "$out/bcast_O2.o"
echo ok

step "plain -O2 (scale $(mul "$scale" 3))"
"$cc" -std=c11 -O2 -g -Wall -Wextra -Werror -pthread "${srcs[@]}" -o "$out/stress"
SHM_RING_STRESS_SCALE=$(mul "$scale" 3) "$out/stress"
"$cc" -std=c11 -O2 -g -Wall -Wextra -Werror -pthread "${bsrcs[@]}" -o "$out/bstress"
SHM_RING_STRESS_SCALE=$(mul "$scale" 3) "$out/bstress"

step "ThreadSanitizer (scale $(mul "$scale" 0.4))"
# (ring.c silences gcc's -Wtsan about atomic_thread_fence itself: see there.)
"$cc" -std=c11 -O1 -g -Wall -Wextra -Werror -pthread -fsanitize=thread "${srcs[@]}" \
    -o "$out/stress_tsan"
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1" \
    SHM_RING_STRESS_SCALE=$(mul "$scale" 0.4) setarch "$(uname -m)" -R "$out/stress_tsan"
"$cc" -std=c11 -O1 -g -Wall -Wextra -Werror -pthread -fsanitize=thread "${bsrcs[@]}" \
    -o "$out/bstress_tsan"
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1" \
    SHM_RING_STRESS_SCALE=$(mul "$scale" 0.4) setarch "$(uname -m)" -R "$out/bstress_tsan"

step "AddressSanitizer + UBSan (scale $(mul "$scale" 1))"
"$cc" -std=c11 -O1 -g -Wall -Wextra -Werror -pthread -fsanitize=address,undefined \
    -fno-sanitize-recover=all -fno-omit-frame-pointer "${srcs[@]}" -o "$out/stress_asan"
ASAN_OPTIONS="halt_on_error=1 detect_leaks=1 abort_on_error=0" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    SHM_RING_STRESS_SCALE=$(mul "$scale" 1) "$out/stress_asan"
# bcast_stress's fuzz loop flips header, cursor, subscriber and slot bytes between calls
"$cc" -std=c11 -O1 -g -Wall -Wextra -Werror -pthread -fsanitize=address,undefined \
    -fno-sanitize-recover=all -fno-omit-frame-pointer "${bsrcs[@]}" -o "$out/bstress_asan"
ASAN_OPTIONS="halt_on_error=1 detect_leaks=1 abort_on_error=0" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    SHM_RING_STRESS_SCALE=$(mul "$scale" 1) "$out/bstress_asan"

step "cffi API-mode build through ring.cdef"
if python3 -c 'import cffi' 2>/dev/null; then
    python3 "$here/check_cdef.py" "$out/cffi"
else
    echo "skipped: python3 has no cffi"
fi

printf '\nrun.sh: all passed in %ds\n' $((SECONDS - t0))
