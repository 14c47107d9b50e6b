#!/usr/bin/env bash
# GPU checks in one prepared run (<= 8 minutes on one GPU): install the gpu extra, compare
# faiss-gpu with faiss-cpu on 1M x 384 (ids equal up to ties, both timed), run one epoch of
# the image benchmark's recipes (BT² among them) on CUDA. Results: eval/gpu/results.json.
# It has not run yet: no GPU machine was at hand in the sessions so far.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LANCEDB_LOG=error HF_HUB_OFFLINE=1
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q "torch==2.13.0" -e ".[gpu,dev]"
timeout 420 python eval/gpu/check.py
