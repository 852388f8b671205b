#!/usr/bin/env bash
# The training path end to end in a few minutes: 20 steps of a tiny model (train/configs/smoke.toml),
# export, PyTorch's figures of the exported weights, the GGUF twin, then `tern perplexity` on both
# files must agree with PyTorch's within 0.5 %. Needs the training venv (train/README.md):
#   PYTHON=.venv-train/bin/python bash train/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=target/train-smoke
"$PYTHON" train/train.py --config train/configs/smoke.toml --out "$out"
"$PYTHON" train/evaluate.py --model "$out" --golden "$out-golden"
cargo run -q -p xtask -- gguf --model "$out" --out "$out.gguf"
cargo build -q -p tern-cli
reference=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["excerpt_perplexity"])' "$out-golden.json")
for model in "$out" "$out.gguf"; do
  ours=$(target/debug/tern perplexity --model "$model" --file "$out-golden-valid.txt" --ctx 128 2>/dev/null | awk '{print $2}')
  echo "$model: tern $ours, PyTorch $reference"
  "$PYTHON" -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a / b - 1) > 0.005)" "$ours" "$reference" \
    || { echo "perplexity differs by more than 0.5 %"; exit 1; }
done
echo "smoke: trained, exported, converted, and Tern agrees with PyTorch"
