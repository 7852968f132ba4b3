"""Rendered text -> token ids with one role per token (PROMPT, COT, KEY), truncation, disk cache.

Prompt and response are encoded separately and concatenated, so the prompt ids are exactly what
generation is fed at evaluation time. The response is encoded once with character offsets.
Straddling rule: a response token takes the role of its LAST character, so a token that crosses
the COT->KEY boundary (e.g. a merged "><" across "</Thinking><Answer>") is KEY, and the KEY tokens
always cover the whole Key span ("<Answer>" ... "</Answer>", or "The answer is ..."), then EOS.
"""
import hashlib
import json
import os

import numpy as np

from atomic_io import atomic_write, write_json

from .records import DataError
from .render import TAGS, render_prompt, render_response
from .roles import COT, KEY, PROMPT

TRUNCATE_MODES = ("drop", "prompt_left")
CACHE_VERSION = 1


class TokenizedDataset:
    """Token ids and roles per kept example, the kept records, and what was dropped and why."""

    def __init__(self, ids, roles, records, stats):
        self.ids, self.roles, self.records, self.stats = ids, roles, records, stats
        self.lengths = np.array([len(x) for x in ids], dtype=np.int64)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i], self.roles[i]


def response_roles(offsets, key_start):
    """COT/KEY per response token from its character offsets (role of its last character)."""
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    last = np.where(spans[:, 1] > spans[:, 0], spans[:, 1] - 1, spans[:, 0])
    return np.where(last >= key_start, KEY, COT).astype(np.uint8)


def encode_example(prompt_ids, response_ids, offsets, key_start, eos_id):
    """(ids int32, roles uint8) for one example; EOS is appended and is KEY."""
    ids = np.array(list(prompt_ids) + list(response_ids) + [eos_id], dtype=np.int32)
    roles = np.concatenate([np.full(len(prompt_ids), PROMPT, np.uint8),
                            response_roles(offsets, key_start), np.array([KEY], np.uint8)])
    return ids, roles


def truncate(ids, roles, max_len, mode):
    """(ids, roles, reason or None, prompt_cut): never cuts a COT or KEY token silently."""
    if max_len is None or len(ids) <= max_len:
        return ids, roles, None, 0
    excess = len(ids) - max_len
    n_prompt = int((roles == PROMPT).sum())
    if mode == "prompt_left" and excess < n_prompt:  # keep at least one prompt token
        return ids[excess:], roles[excess:], None, excess
    return None, None, "too_long" if mode == "drop" else "too_long_after_prompt_cut", 0


def _percentiles(lengths):
    if len(lengths) == 0:
        return {}
    return {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)} | {
        "max": int(lengths.max()), "mean": round(float(lengths.mean()), 1)}


def _cache_key(records, tok, settings):
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(tok.fingerprint().encode())
    for r in records:
        h.update(json.dumps([r.prompt, r.thinking, r.answer], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()[:24]


def _load_cache(base, records):
    if not (os.path.exists(base + ".npz") and os.path.exists(base + ".json")):
        return None
    with open(base + ".json") as f:
        stats = json.load(f)
    with np.load(base + ".npz", allow_pickle=False) as z:
        flat_ids, flat_roles, bounds, kept = z["ids"], z["roles"], z["bounds"], z["kept"]
    ids = [flat_ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    roles = [flat_roles[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return TokenizedDataset(ids, roles, [records[i] for i in kept], stats)


def _save_cache(base, ds, kept):
    os.makedirs(os.path.dirname(base), exist_ok=True)
    bounds = np.concatenate([[0], np.cumsum(ds.lengths)]).astype(np.int64)
    with atomic_write(base + ".npz", "wb") as f:  # arrays first: the JSON's presence marks completion
        np.savez(f, ids=np.concatenate(ds.ids) if ds.ids else np.zeros(0, np.int32),
                 roles=np.concatenate(ds.roles) if ds.roles else np.zeros(0, np.uint8),
                 bounds=bounds, kept=np.array(kept, dtype=np.int64))
    write_json(base + ".json", ds.stats)


def build_dataset(records, tok, style="tagged", template="plain", max_len=2048, truncate_mode="drop",
                  tags_as_special=False, system=None, cache_dir=None, batch_size=1024):
    """Tokenise records into a TokenizedDataset (ids, roles, kept records, stats).

    style: "tagged" | "plain" response; template: "plain" | "chat" prompt. Examples longer than
    max_len are dropped and counted (truncate_mode="drop") or lose prompt tokens from the left
    ("prompt_left"); COT and KEY tokens are never cut. tags_as_special registers the four tags as
    special tokens on tok first (the model's vocabulary must then grow to tok.vocab_size).
    cache_dir: reuse the arrays of an identical earlier call (same records, tokenizer, settings).
    """
    if truncate_mode not in TRUNCATE_MODES:
        raise ValueError(f"truncate_mode must be one of {TRUNCATE_MODES}, got {truncate_mode!r}")
    added = tok.add_special_tokens(list(TAGS)) if tags_as_special else 0
    settings = {"v": CACHE_VERSION, "style": style, "template": template, "max_len": max_len,
                "truncate_mode": truncate_mode, "system": system}
    base = None
    if cache_dir:
        base = os.path.join(cache_dir, "tokenized-" + _cache_key(records, tok, settings))
        cached = _load_cache(base, records)
        if cached is not None:
            return cached

    ids_out, roles_out, kept, reasons = [], [], [], {}
    prompt_cut = 0
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        prompts = [render_prompt(r, tok, template, system=system) for r in chunk]
        responses = [render_response(r, style) for r in chunk]
        enc_p = tok.tokenizer.encode_batch(prompts, add_special_tokens=False)
        enc_r = tok.tokenizer.encode_batch([t for t, _ in responses], add_special_tokens=False)
        for j, (p, r, (_, key_start)) in enumerate(zip(enc_p, enc_r, responses)):
            ids, roles = encode_example(p.ids, r.ids, r.offsets, key_start, tok.eos_id)
            ids, roles, reason, cut = truncate(ids, roles, max_len, truncate_mode)
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
            prompt_cut += cut > 0
            ids_out.append(ids)
            roles_out.append(roles)
            kept.append(start + j)

    if not ids_out:
        raise DataError(f"no examples left out of {len(records)} (dropped: {reasons or 'none'}); "
                        f"raise max_len (now {max_len}) or use truncate_mode='prompt_left'",
                        field="max_len")
    flat_roles = np.concatenate(roles_out)
    lengths = np.array([len(x) for x in ids_out])
    counts = {name: int((flat_roles == role).sum())
              for name, role in (("prompt", PROMPT), ("cot", COT), ("key", KEY))}
    stats = {"kept": len(ids_out), "dropped": len(records) - len(ids_out), "reasons": reasons,
             "prompt_truncated": prompt_cut, "tokens": int(lengths.sum()),
             **{f"{k}_tokens": v for k, v in counts.items()},
             "key_share": round(counts["key"] / max(1, counts["cot"] + counts["key"]), 4),
             "lengths": _percentiles(lengths), "added_tokens": added,
             "style": style, "template": template, "max_len": max_len}
    ds = TokenizedDataset(ids_out, roles_out, [records[i] for i in kept], stats)
    if base:
        _save_cache(base, ds, kept)
    return ds
