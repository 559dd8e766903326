#!/usr/bin/env bash
# test_robust_finetune.sh -- the main job end to end, small: a LeNet is trained briefly on
# Fashion-MNIST (standard training), pruned to 90% sparsity by magnitude, and fine-tuned with
# PGD adversarial training on the sparse structure.  Robust accuracy (PGD-10, eps 0.1, on the
# first 400 test images, measured with `ticket attack`) must rise by at least 20 points over
# the better of the standard-trained start and its pruned copy, and the mask must come out
# unchanged (`ticket masks`).  Uses the fastest engine the build has (compiled, else dense);
# with only the reference engine the test is skipped unless TICKET_HEAVY=1.
set -euo pipefail
T=${TICKET_BIN:?TICKET_BIN is not set}
PY=/usr/bin/python3
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "SKIPPED: Fashion-MNIST (Debian dataset-fashion-mnist) is not installed"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
DATA=(--data fashion-mnist)
COMMON=(--threads 2 --batch 64 --val 0)
ATTACK=(--eps 0.1 --alpha 0.025 --steps 10 --limit 400 --seed 0 --threads 2 --json)
json() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(d$2)" "$1"; }

"$T" init lenet -o lenet.tkt --seed 1 > /dev/null
# which engine `auto` gives (one short step)
"$T" train lenet.tkt "${DATA[@]}" --mode st --limit 64 --epochs 1 "${COMMON[@]}" -o probe.tkt --json > probe.json 2> /dev/null
engine=$(json probe.json "['engine']")
echo "engine: $engine"
if [ "$engine" = "reference" ] && [ "${TICKET_HEAVY:-0}" != "1" ]; then
  echo "SKIPPED: this build has neither the compiled nor the dense engine; the reference engine takes" \
       "far longer than this test's budget (TICKET_HEAVY=1 runs it anyway)"
  exit 77
fi

echo "== standard training: 2 epochs on 3000 images"
"$T" train lenet.tkt "${DATA[@]}" --mode st --epochs 2 --limit 3000 "${COMMON[@]}" --lr 0.1 --schedule cosine \
  --seed 1 -o st.tkt --json > st_train.json
echo "== magnitude pruning to 90%"
"$T" prune st.tkt --method magnitude --sparsity 0.9 -o p90.tkt --json > prune.json
echo "sparsity $(json prune.json "['sparsity']")"
echo "== PGD-3 adversarial fine-tuning: 2 epochs on 3000 images"
"$T" train p90.tkt "${DATA[@]}" --mode pgd --eps 0.1 --alpha 0.04 --steps 3 --epochs 2 --limit 3000 "${COMMON[@]}" \
  --lr 0.05 --schedule cosine --seed 2 -o at.tkt --json > at_train.json
echo "== PGD-10 attacks at eps 0.1 (400 test images)"
for m in st p90 at; do
  "$T" attack $m.tkt "${DATA[@]}" "${ATTACK[@]}" > attack_$m.json
  printf '%-4s SA %.3f  RA %.3f  (engine %s)\n' $m "$(json attack_$m.json "['sa']")" "$(json attack_$m.json "['ra']")" \
    "$(json attack_$m.json "['engine']")"
done
"$T" masks p90.tkt at.tkt --json > masks.json

$PY - <<'EOF'
import json
load = lambda f: json.load(open(f))
st, p90, at = load("attack_st.json"), load("attack_p90.json"), load("attack_at.json")
masks, train = load("masks.json"), load("at_train.json")
ok = True
base = max(st["ra"], p90["ra"])
gain = at["ra"] - base
print("RA: standard %.3f, pruned %.3f, fine-tuned %.3f: +%.1f points (needs +20)" % (st["ra"], p90["ra"], at["ra"], 100 * gain))
if gain < 0.20:
    print("FAIL: robust accuracy rose by %.1f points only" % (100 * gain))
    ok = False
tot = masks["total"]
if tot["only_a"] or tot["only_b"] or abs(tot["jaccard"] - 1.0) > 0 or abs(tot["sparsity_b"] - 0.9) > 1e-3:
    print("FAIL: the mask changed during fine-tuning: %s" % tot)
    ok = False
if abs(train["sparsity"] - 0.9) > 1e-3 or not train["mask_ok"]:
    print("FAIL: ticket train reports sparsity %s" % train["sparsity"])
    ok = False
if at["sa"] < 0.5:
    print("FAIL: standard accuracy collapsed to %.3f" % at["sa"])
    ok = False
raise SystemExit(0 if ok else 1)
EOF
echo "test_robust_finetune: passed"
