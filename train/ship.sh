#!/usr/bin/env bash
# Regenerates the shipped default model from scratch, seeded: corpus → tokenizer → training →
# models/tern-pydoc-6m (2B-4T packed layout) → PyTorch's figures and the test goldens → the I2_S
# GGUF twin. About 50 minutes on a 2-core CPU (train/README.md). Needs the training venv:
#   PYTHON=.venv-train/bin/python bash train/ship.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" train/train.py --config train/configs/pydoc-6m.toml
"$PYTHON" train/evaluate.py --model models/tern-pydoc-6m --golden tests/reference/goldens/tern-pydoc-6m
cargo run -q -p xtask -- gguf --model models/tern-pydoc-6m --out models/tern-pydoc-6m-i2_s.gguf
