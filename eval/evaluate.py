"""evaluate(): render prompts, generate, decode, extract, compare, and write metrics + predictions.

The output judged is the decoded new text with special tokens removed (EOS, pad; tags stay even
when they were registered as special tokens), cut right after the first `</Answer>` for the
tagged style (generation stops there; a stop token may carry text past it). Fmt is measured for
both styles by the same rule (a plain-arm output has no tags, so its Fmt is 0 by definition).
A record's kind guides comparison when it is number, latex or choice; "text" (the Record default)
is auto-detected, which still compares as text when the reference is not a number/letter/LaTeX.
"""
import json
import os
import time

from atomic_io import atomic_write
from eval.answers import ANSWER_CLOSE, extract, is_correct
from eval.generate import generate
from eval.metrics import format_ok, mean_ci, summarise

TAG_STRINGS = ("<Thinking>", "</Thinking>", "<Answer>", "</Answer>")
STYLES = ("tagged", "plain")


def evaluate(model, tok, records, style="tagged", template="plain", max_new_tokens=512,
             batch_size=16, out_dir=None, device=None, autocast_dtype=None, temperature=0.0,
             top_p=1.0, seed=None, pack_weights=True):
    """Generate for every record and judge it; returns the metrics dict (also metrics.json).

    out_dir: when given, writes metrics.json and predictions.jsonl there (atomically).
    device: move the model there first (None: where it already is).
    """
    from data import render_prompt  # data/ is only needed here, not for answers or metrics

    if style not in STYLES:
        raise ValueError(f"evaluate: style must be one of {STYLES}, got {style!r}")
    records = list(records)
    if device is not None:
        model.to(device)
    prompts = [render_prompt(r, tok, template) for r in records]
    prompt_ids = [tok.encode(p) for p in prompts]
    eos_ids = _eos_ids(tok, model)
    started = time.perf_counter()
    generated = generate(model, prompt_ids, max_new_tokens, eos_ids,
                         temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                         stop_strings=[ANSWER_CLOSE] if style == "tagged" else None,
                         tokenizer=tok if style == "tagged" else None, pad_id=tok.pad_id,
                         autocast_dtype=autocast_dtype, pack_weights=pack_weights)
    seconds = time.perf_counter() - started
    hidden_ids = _hidden_special_ids(tok)
    predictions = []
    for record, prompt, new_ids in zip(records, prompts, generated):
        output = decode_output(tok, new_ids, hidden_ids, style)
        extracted, rule = extract(output, style)
        kind = record.kind if record.kind in ("number", "latex", "choice") else None
        choices = getattr(record, "choices", None)
        predictions.append({
            "id": record.id, "source": record.source, "prompt": prompt, "output": output,
            "extracted": extracted, "rule": rule, "reference": record.answer,
            "kind": record.kind, "correct": is_correct(extracted, record.answer, kind, choices),
            "format_ok": format_ok(output), "new_tokens": len(new_ids),
            "stopped": _stop_reason(new_ids, output, eos_ids, max_new_tokens, style)})
    metrics = _metrics(predictions, style, template, max_new_tokens, seconds)
    if out_dir is not None:
        write_results(out_dir, metrics, predictions)
    return metrics


def _eos_ids(tok, model):
    ids = {tok.eos_id}
    config_eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update([config_eos] if isinstance(config_eos, int) else config_eos)
    return sorted(i for i in ids if i is not None)


def _hidden_special_ids(tok):
    """Ids of special tokens to drop before decoding, keeping the tags if they are special."""
    inner = getattr(tok, "tokenizer", None)
    added = inner.get_added_tokens_decoder() if inner is not None else {}
    ids = {i for i, t in added.items() if t.special and t.content not in TAG_STRINGS}
    ids.update(i for i in (tok.eos_id, tok.pad_id, tok.bos_id) if i is not None)
    return ids


def decode_output(tok, new_ids, hidden_ids, style):
    text = tok.decode([i for i in new_ids if i not in hidden_ids])
    if style == "tagged":
        close = text.find(ANSWER_CLOSE)
        if close >= 0:
            text = text[:close + len(ANSWER_CLOSE)]
    return text


def _stop_reason(new_ids, output, eos_ids, max_new_tokens, style):
    if new_ids and new_ids[-1] in eos_ids:
        return "eos"
    if style == "tagged" and output.endswith(ANSWER_CLOSE):
        return "stop"
    return "length" if len(new_ids) >= max_new_tokens else "other"


def _metrics(predictions, style, template, max_new_tokens, seconds):
    n = len(predictions)
    metrics = summarise([p["correct"] for p in predictions], [p["format_ok"] for p in predictions])
    new_tokens = sum(p["new_tokens"] for p in predictions)
    if n:
        metrics["acc_ci95"] = _interval(mean_ci([float(p["correct"]) for p in predictions]))
        metrics["fmt_ci95"] = _interval(mean_ci([float(p["format_ok"]) for p in predictions]))
        metrics["no_answer"] = sum(p["extracted"] is None for p in predictions) / n
        metrics["hit_max_new_tokens"] = sum(p["stopped"] == "length" for p in predictions) / n
        metrics["mean_new_tokens"] = new_tokens / n
    metrics.update({"style": style, "template": template, "max_new_tokens": max_new_tokens,
                    "seconds": round(seconds, 3),
                    "new_tokens_per_s": round(new_tokens / seconds, 1) if seconds > 0 else None})
    return metrics


def _interval(ci):
    return None if ci["n"] < 2 else [ci["lo"], ci["hi"]]


def write_results(out_dir, metrics, predictions):
    """metrics.json and predictions.jsonl, each written to a temp file and renamed into place."""
    os.makedirs(out_dir, exist_ok=True)
    with atomic_write(os.path.join(out_dir, "metrics.json")) as f:
        f.write(json.dumps(metrics, indent=1) + "\n")
    with atomic_write(os.path.join(out_dir, "predictions.jsonl")) as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
