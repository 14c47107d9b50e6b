#!/usr/bin/env bash
# The README's text-retriever commands, typed as a user would, for the ADORE and BT² rows of
# eval/compat_text/results.md; writes eval/compat_text/reproduce.json (new/old scores of each).
#
#     bash eval/compat_text/reproduce.sh [WORK]      # WORK defaults to indexes/reproduce (about 25 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-indexes/reproduce}
DATA=${COMPATRET_DATA:-../shared/data}
mkdir -p "$WORK"
if [ ! -f "$WORK/added" ]; then
  compatret index create "$WORK/scifact-l6" --model minilm-l6 2>/dev/null || true
  compatret index add "$WORK/scifact-l6" --items "$DATA/scifact/corpus.jsonl" && touch "$WORK/added"
fi
for method in adore bt2; do
  compatret train retriever --recipe "training/scifact_$method.toml" --gallery "$WORK/scifact-l6" --out "$WORK/models/$method"
  compatret eval retrieval --query-model "$WORK/models/$method" --gallery "$WORK/scifact-l6" \
      --data "$DATA/scifact" --split test --json > "$WORK/$method.json"
done
python - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
table = json.loads(Path("eval/compat_text/results.json").read_text())["methods"]
out = {}
for m in ("adore", "bt2"):
    got = json.loads((work / f"{m}.json").read_text())
    out[m] = {"readme_command_ndcg_at_10": got["ndcg_at_10"], "table_ndcg_at_10": table[m]["new_old"]["ndcg_at_10"],
              "difference": got["ndcg_at_10"] - table[m]["new_old"]["ndcg_at_10"], "mrr_at_10": got["mrr_at_10"],
              "recall_at_100": got["recall_at_100"]}
    print(f"{m}: README commands {got['ndcg_at_10']:.4f} vs table {out[m]['table_ndcg_at_10']:.4f} ({out[m]['difference']:+.4f})")
out["command"] = "bash eval/compat_text/reproduce.sh"
Path("eval/compat_text/reproduce.json").write_text(json.dumps(out, indent=2) + "\n")
EOF
