#!/usr/bin/env bash
# The continual gate on the label-free measure: a base adapted to debate arguments (ArguAna) is
# updated on Wikipedia articles twice, once harmfully (50x the learning rate, no warm-up) and once
# with the recipe. The gate compares champion and challenger on held-out documents of both
# domains: new.pseudo_ndcg_at_10 must improve, old.pseudo_ndcg_at_10 (and STS-B, and every other
# old-domain figure) may worsen by at most continual.gate.tolerance (2%).
#
#   bash bench/adapt_continual.sh [HOME]        # ~15 min on 2 CPU cores (AVX2, fp32)
#
# Needs ../shared/data (ArguAna and the Wikipedia extract); prints each update's decision.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/ctxvec ] && export PATH="$PWD/.venv/bin:$PATH"  # the make setup venv, if there is one
DATA=../shared/data
[ -f "$DATA/beir-arguana/corpus.jsonl" ] || { echo "skipped: no $DATA/beir-arguana"; exit 0; }
export CTXVEC_HOME=${1:-/tmp/ctxvec-adapt-continual}
mkdir -p "$CTXVEC_HOME"
RECIPE=configs/adapt-domain.yaml
# small enough for a demonstration on two cores: 400 arguments, 200 articles, 20 steps each;
# every 5th document of each domain held out for the gate (80 arguments, 40 articles)
BASE=(--set train.steps=20 --set ingest.max_docs=400 --set continual.heldout_every=5)
UPDATE=(--set train.steps=20 --set 'ingest.sources=['"$DATA"'/enwiki-wikiextractor/AA/wiki_00.gz]'
        --set ingest.max_docs=200 --set ingest.min_chars=400 --set continual.heldout_every=5)
summary() {
  python -c '
import json, sys
r = json.load(sys.stdin)
print("status:", r["status"], "| version", r.get("version"), "|", r["gate"]["reason"])
for c in r["gate"]["checks"]:
    if c["champion"] is not None:
        verdict = "pass" if c["passed"] else "FAIL"
        gain = 100 * c["relative_gain"]
        print("  %-10s %-24s %.4f -> %.4f (%+.1f%%) %s" % (
            c["kind"], c["metric"], c["champion"], c["challenger"], gain, verdict))
'
}
if ! ctxvec models list --json 2>/dev/null | grep -q '"champion"'; then
  echo "== base: the recipe on ArguAna (400 arguments)"
  ctxvec run -c $RECIPE "${BASE[@]}" \
    --set "ingest.sources=[$DATA/beir-arguana/corpus.jsonl]" --json > "$CTXVEC_HOME/base.json"
fi
echo "== harmful update on Wikipedia: lr 1e-3, no warm-up (from version 1)"
ctxvec update -c $RECIPE "${UPDATE[@]}" --set continual.parent=1 --set train.lr=1.0e-3 \
  --set train.warmup_steps=0 --json | tee "$CTXVEC_HOME/harmful.json" | summary
echo "== the recipe's update on Wikipedia (from version 1)"
ctxvec update -c $RECIPE "${UPDATE[@]}" --set continual.parent=1 --json \
  | tee "$CTXVEC_HOME/update.json" | summary
