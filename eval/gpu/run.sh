#!/usr/bin/env bash
# GPU checks in one prepared run (<= 10 minutes on one GPU): install the gpu extra, compare
# faiss-gpu with faiss-cpu on 1M x 384 (ids equal up to ties, both timed), run one epoch of
# the image benchmark's recipes (BT² among them) on CUDA (eval/gpu/results.json), then the BT²
# and d-Simplex paper-protocol recipes (training/tinyimagenet100_paper_*.toml: full-width
# ResNet-18, Adam + cosine, bf16, loader workers) for 2 epochs each, scored old/old, new/old,
# new/new with ECC (eval/gpu/paper_results.json; the recipes' 100 / 70 epochs take hours).
# It has not run yet: no GPU machine was at hand in the sessions so far.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LANCEDB_LOG=error HF_HUB_OFFLINE=1
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q "torch==2.13.0" -e ".[gpu,dev]"
timeout 240 python eval/gpu/check.py
timeout 330 python eval/gpu/paper.py --epochs 2
