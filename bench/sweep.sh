#!/usr/bin/env bash
# sweep.sh -- whole-model and per-layer speedups of the compiled engine over oneDNN and
# PyTorch, against sparsity: resnet18, vgg16_bn and wrn_28_4 (zoo, CIFAR 3x32x32) with
# uniform random masks per layer at s = 0.5 0.8 0.9 0.95 0.98 0.99, batch 1 and 32, 1 and 2
# threads.  Every run is `ticket bench --json` (the engines' iterations interleaved in one run,
# ratio of medians); PyTorch (eager channels_last and jit.trace + optimize_for_inference, a worker
# process taking its turns between ours) runs once per model, batch and thread count, at the
# first sparsity, since zeros do not speed it up (--torch-every: in every run).  The
# batch-1 single-thread run of each (model, sparsity) also builds the engine cold from an empty
# cache and warm from the filled one and counts the generated code.
#
# Both sides run with OMP_WAIT_POLICY=PASSIVE (PyTorch needs it, DESIGN.md section 8; ours
# then waits the same way): on a busy machine spinning OpenMP threads lose whole time slices
# at every barrier (measured 4x slower medians under load); --wait-policy active (or default)
# keeps libgomp's spinning for ticket on a quiet machine.
#
# usage: bench/sweep.sh [--quick] [--out DIR] [--ticket PATH] [--models "a b"]
#                       [--sparsities "0.5 0.9"] [--batches "1 32"] [--threads "1 2"]
#                       [--modes "infer pgd train"] [--no-torch] [--torch-every] [--no-layers]
#                       [--iters K] [--warmup W] [--wait-policy P]
#   --quick    resnet18 only, s = 0.5 0.9 0.99, batch 1 and 32, 1 thread, fewer iterations
#              (a few minutes)
#   --out DIR  results (default out/bench-<date>-<time>, ignored by git): results.jsonl (one line per run),
#              summary.txt, speedup.dat, layers.dat, speedup.png, layers.png, log.txt
#   --ticket   the ticket binary (default $TICKET_BIN, else build/ticket under the source tree)
#   --torch-every  time PyTorch in every run, its iterations interleaved with ours, not only at
#              the first sparsity of each model
#   --no-layers    skip the per-layer profile pass (halves the time of pgd/train runs)
#   --iters K / --warmup W  timed and untimed iterations per engine (defaults depend on batch, mode)
# The robust-runtime table (PGD-10 evaluation and PGD-AT steps at batch 128, README):
#   bench/sweep.sh --models "resnet18 vgg16_bn" --sparsities "0 0.9 0.95 0.99" --batches 128 \
#                  --threads 2 --modes "pgd train" --torch-every --no-layers --iters 2 --warmup 1
# The full sweep takes about 25 minutes on 2 cores.  Run it on a quiet machine: the engines take
# turns, so a neighbour slows all of them, but medians of a loaded machine are still noisy; the
# speedups over PyTorch of runs without it use the figure of another run (report.py marks them).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
quick=0
out=""
ticket="${TICKET_BIN:-$root/build/ticket}"
models="resnet18 vgg16_bn wrn_28_4"
sparsities="0.5 0.8 0.9 0.95 0.98 0.99"
batches="1 32"
threads="1 2"
modes="infer"
torch=1
torch_every=0
layers=--layers
iters=""
warmup=""
wait_policy=PASSIVE

die() { echo "sweep.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; models="resnet18"; sparsities="0.5 0.9 0.99"; threads="1" ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --ticket) ticket="${2:?--ticket needs a path}"; shift ;;
    --models) models="${2:?}"; shift ;;
    --sparsities) sparsities="${2:?}"; shift ;;
    --batches) batches="${2:?}"; shift ;;
    --threads) threads="${2:?}"; shift ;;
    --modes) modes="${2:?}"; shift ;;
    --no-torch) torch=0 ;;
    --torch-every) torch_every=1 ;;
    --no-layers) layers="" ;;
    --iters) iters="${2:?--iters needs a count}"; shift ;;
    --warmup) warmup="${2:?--warmup needs a count}"; shift ;;
    --wait-policy) wait_policy="${2:?}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[ -x "$ticket" ] || die "$ticket: no ticket binary (build it, or give --ticket / TICKET_BIN)"
[ -n "$out" ] || out="out/bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
results="$out/results.jsonl"
log="$out/log.txt"
: > "$results"
# kernels compiled by the sweep stay in its own cache
export TICKET_CACHE="$out/cache"
if [ "$wait_policy" = default ]; then unset OMP_WAIT_POLICY; else export OMP_WAIT_POLICY="$wait_policy"; fi

# iterations per run: enough for stable medians, small enough for the time budget
iters_for() { # batch mode
  local b="$1" m="$2"
  if [ "$m" != infer ]; then echo "3 1"; return; fi
  if [ "$quick" = 1 ]; then [ "$b" -le 4 ] && echo "20 3" || echo "4 1"; return; fi
  [ "$b" -le 4 ] && echo "40 5" || echo "6 1"
}

{
  echo "sweep: $(date -Iseconds) on $(uname -n), $(nproc) cores"
  echo "ticket: $ticket ($("$ticket" --version))"
  echo "models: $models; sparsities: $sparsities; batches: $batches; threads: $threads; modes: $modes"
  echo "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(libgomp default)}; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$log"
start=$(date +%s)
for mode in $modes; do
  for m in $models; do
    first_s=""
    for s in $sparsities; do
      [ -n "$first_s" ] || first_s="$s"
      for b in $batches; do
        for t in $threads; do
          read -r it wu < <(iters_for "$b" "$mode")
          [ -n "$iters" ] && it="$iters"
          [ -n "$warmup" ] && wu="$warmup"
          vs=dense
          [ "$torch" = 1 ] && { [ "$s" = "$first_s" ] || [ "$torch_every" = 1 ]; } && vs=dense,torch
          extra=()
          [ "$b" = "$(echo "$batches" | awk '{print $1}')" ] && [ "$t" = "$(echo "$threads" | awk '{print $1}')" ] &&
            [ "$mode" = infer ] && extra+=(--compile-stats)
          [ "$mode" = train ] && [ "$b" -lt 2 ] && continue
          printf '%-6s %-9s s=%-5s batch=%-3s threads=%s ... ' "$mode" "$m" "$s" "$b" "$t" | tee -a "$log"
          t0=$(date +%s)
          if line=$("$ticket" bench "$m" --random-mask "$s" --batch "$b" --threads "$t" --iters "$it" \
              --warmup "$wu" --mode "$mode" --vs "$vs" $layers --json "${extra[@]}" 2>>"$log"); then
            echo "$line" >> "$results"
            /usr/bin/python3 -c 'import json,sys; r=json.loads(sys.argv[1]); t=r.get("speedup_vs_torch"); print("%.2fx vs oneDNN (%.3f ms vs %.3f ms)%s" % (r["speedup_vs_dense"], r["compiled"]["latency"]["median_ms"], r["dense"]["latency"]["median_ms"], ", %.2fx vs PyTorch" % t if t else ""))' "$line" | tee -a "$log"
          else
            echo "FAILED (see $log)" | tee -a "$log"
          fi
          echo "  ($(( $(date +%s) - t0 )) s)" >> "$log"
        done
      done
    done
  done
done
echo "sweep: $(( $(date +%s) - start )) s in all" | tee -a "$log"

/usr/bin/python3 "$here/report.py" "$results" "$out" | tee -a "$log"
if command -v gnuplot > /dev/null; then
  gnuplot -e "dir='$out'; models='$models'; batches='$batches'; threads='$threads'" "$here/plot.gp" &&
    echo "plots: $out/speedup.png $out/layers.png"
else
  echo "gnuplot not found: no plots (the data is in $out/speedup.dat)"
fi
