#!/usr/bin/env bash
# demo.sh -- the main job, end to end on an embedded default (Fashion-MNIST from Debian's
# dataset-fashion-mnist), a few minutes on 2 cores:
#   make a LeNet, train it briefly, prune it to 90% with SynFlow, compile it, attack it
#   (PGD, eps 0.1), fine-tune it adversarially on the sparse structure, attack again, and
#   compare the speed of the compiled sparse code with dense oneDNN.
# Results land in out/demo/ (models, JSON of every step, summary.json).
#   scripts/demo.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null

T=build/ticket
O=out/demo
mkdir -p "$O"
export TICKET_CACHE="${TICKET_CACHE:-$PWD/build/cache}"

ST_N=12000; AT_N=6000; TEST_N=1000; ST_EPOCHS=3; AT_EPOCHS=2
if [ "${1:-}" = "--quick" ]; then ST_N=6000; AT_N=2000; TEST_N=300; ST_EPOCHS=2; AT_EPOCHS=1; fi
ATTACK=(--eps 0.1 --alpha 0.025 --steps 10 --limit "$TEST_N")
DATA=(--data fashion-mnist)

step() { printf '\n== %s\n' "$*"; }

step "1. a LeNet for Fashion-MNIST (reference initialisation)"
$T init lenet -o "$O/lenet.tkt" --seed 1
$T info "$O/lenet.tkt" | tail -n 3

step "2. standard training ($ST_EPOCHS epochs on $ST_N images)"
$T train "$O/lenet.tkt" "${DATA[@]}" --mode st --epochs $ST_EPOCHS --limit $ST_N --batch 128 \
   --lr 0.1 --schedule cosine --seed 1 --val 1000 --val-steps 0 --engine compiled -o "$O/lenet_st.tkt" --json > "$O/train_st.json"

step "3. prune to 90% sparsity (SynFlow: data free, 100 rounds, global)"
$T prune "$O/lenet_st.tkt" --method synflow --sparsity 0.9 -o "$O/lenet_p90.tkt" --json > "$O/prune.json"
$T info "$O/lenet_p90.tkt" | tail -n 3

step "4. compile: the plan for batch 1"
$T plan "$O/lenet_p90.tkt" --batch 1

step "5. attack the pruned model: PGD-10, eps 0.1"
$T attack "$O/lenet_p90.tkt" "${DATA[@]}" "${ATTACK[@]}" --engine compiled --json > "$O/attack_before.json"

step "6. adversarial fine-tuning on the sparse structure (PGD-5 AT, $AT_EPOCHS epochs on $AT_N images)"
$T train "$O/lenet_p90.tkt" "${DATA[@]}" --mode pgd --eps 0.1 --alpha 0.03 --steps 5 --epochs $AT_EPOCHS \
   --limit $AT_N --batch 128 --lr 0.05 --schedule cosine --seed 2 --val 500 --val-steps 5 --engine compiled \
   -o "$O/lenet_p90_at.tkt" --json > "$O/train_at.json"

step "7. attack again"
$T attack "$O/lenet_p90_at.tkt" "${DATA[@]}" "${ATTACK[@]}" --engine compiled --json > "$O/attack_after.json"

step "8. speed: compiled sparse vs dense oneDNN (batch 1 and 64, all threads)"
$T bench "$O/lenet_p90_at.tkt" --batch 1 --vs dense --json > "$O/bench_b1.json"
$T bench "$O/lenet_p90_at.tkt" --batch 64 --vs dense --json > "$O/bench_b64.json"

/usr/bin/python3 scripts/demo_summary.py "$O"
