#!/usr/bin/env bash
# Fuzzes every reader target for SECONDS each (default 30), seeded from the committed fixtures, and
# prints the executions libFuzzer ran. Installs what it needs (nightly, cargo-fuzz) when missing.
#
#   bash engine/fuzz/run.sh 20       # what .ci/run does: 20 s per target
#   bash engine/fuzz/run.sh 3600     # a long run; new inputs stay in engine/fuzz/corpus/<target>/
#
# A crash leaves its input in engine/fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run <target> engine/fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
targets=(safetensors gguf config_json tokenizer_config chat_template)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz

# Seeds: the fixtures small enough to mutate quickly (libFuzzer also keeps what it finds here).
fixtures=../../tests/fixtures
mkdir -p corpus/safetensors corpus/gguf corpus/config_json corpus/tokenizer_config corpus/chat_template
for dir in "$fixtures"/*/; do
  name=$(basename "$dir")
  for file in "$dir"*.safetensors; do
    [ -f "$file" ] && [ "$(stat -c %s "$file")" -le 2097152 ] && cp "$file" "corpus/safetensors/$name-$(basename "$file")"
  done
  [ -f "$dir/config.json" ] && cp "$dir/config.json" "corpus/config_json/$name.json"
  [ -f "$dir/tokenizer_config.json" ] && cp "$dir/tokenizer_config.json" "corpus/tokenizer_config/$name.json"
done
cp "$fixtures"/*.gguf corpus/gguf/
# Chat templates: every template the golden renders cover, one file each.
python3 - ../../tests/reference/goldens/chat_templates.json corpus/chat_template <<'PY'
import json, sys
for name, source in json.load(open(sys.argv[1]))["templates"].items():
    open(f"{sys.argv[2]}/{name}.jinja", "w").write(source)
PY

cargo +nightly fuzz build
summary=()
for target in "${targets[@]}"; do
  log=$(mktemp)
  # Whole fixture files fit in max_len, so the checkpoint checks past the header are reached too.
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=2097152 -timeout=10 -print_final_stats=1 2>"$log" || {
    tail -n 60 "$log"
    echo "fuzz target $target failed; the input is in engine/fuzz/artifacts/$target/" >&2
    exit 1
  }
  summary+=("$target: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)s, $(grep -E '^#[0-9]+.*DONE' "$log" | tail -1 | grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9/]+[a-zA-Z]*')")
  rm -f "$log"
done
printf 'fuzzed %s\n' "${summary[@]}"
