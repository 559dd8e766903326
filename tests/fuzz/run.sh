#!/usr/bin/env bash
# run.sh -- build the model-loader fuzz target with clang-16 (libFuzzer + ASan + UBSan) and run
# it for a bounded time.  Not part of ctest.
#
#   tests/fuzz/run.sh [SECONDS]       default 60; env FUZZ_JOBS (default 1), FUZZ_WORK (build dir)
#
# Builds compiler/load.cc, compiler/model.c and runtime/util.c with the generated FlatBuffers
# header and the embedded schema, writes a seed corpus (make_seeds.c) and runs libFuzzer.
# Crashes are written to $FUZZ_WORK/crash-*; the exit status is non-zero when one is found.
set -euo pipefail
SECONDS_TO_RUN=${1:-60}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${FUZZ_WORK:-$SRC/build-fuzz}
CC=${CC_FUZZ:-clang-16}
CXX=${CXX_FUZZ:-clang++-16}
command -v "$CC" >/dev/null || { echo "run.sh: $CC not found" >&2; exit 2; }
command -v flatc >/dev/null || { echo "run.sh: flatc not found" >&2; exit 2; }
mkdir -p "$WORK/gen" "$WORK/corpus" "$WORK/obj"

flatc --cpp -o "$WORK/gen" "$SRC/schema/ticket.fbs"
cmake -DOUT="$WORK/gen/embedded.c" -DROOT="$SRC" -DFILES="$SRC/schema/ticket.fbs" -P "$SRC/cmake/embed.cmake"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"
INC="-I$SRC/include -I$SRC -I$SRC/compiler -I$WORK/gen"
DEFS="-D_GNU_SOURCE"
for f in compiler/model.c runtime/util.c; do
  "$CC" -std=gnu11 $SAN -fsanitize=fuzzer-no-link $INC $DEFS -c "$SRC/$f" -o "$WORK/obj/$(basename "$f").o"
done
"$CC" -std=gnu11 $SAN $INC $DEFS -c "$WORK/gen/embedded.c" -o "$WORK/obj/embedded.o"
"$CXX" -std=c++17 $SAN -fsanitize=fuzzer-no-link $INC $DEFS -c "$SRC/compiler/load.cc" -o "$WORK/obj/load.o"
"$CC" -std=gnu11 $SAN -fsanitize=fuzzer $INC $DEFS -c "$SRC/tests/fuzz/fuzz_load.c" -o "$WORK/obj/fuzz_load.o"
"$CXX" $SAN -fsanitize=fuzzer "$WORK"/obj/{fuzz_load,load,model.c,util.c,embedded}.o -lflatbuffers -lm \
  -o "$WORK/fuzz_load"
"$CC" -std=gnu11 $SAN $INC $DEFS -c "$SRC/tests/fuzz/make_seeds.c" -o "$WORK/obj/make_seeds.o"
"$CXX" $SAN -fsanitize=fuzzer-no-link "$WORK"/obj/{make_seeds,load,model.c,util.c,embedded}.o -lflatbuffers -lm \
  -o "$WORK/make_seeds"
ASAN_OPTIONS=detect_leaks=0 "$WORK/make_seeds" "$WORK/corpus"

cd "$WORK"
export LSAN_OPTIONS="suppressions=$SRC/tests/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1"
JOBS=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then JOBS=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
./fuzz_load -max_total_time="$SECONDS_TO_RUN" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 "${JOBS[@]}" corpus
