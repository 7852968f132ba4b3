"""Batched generation with the model's KV cache: left padding, per-row positions, greedy or top-p.

Prompts are sorted by length (longest first) into batches to cut padding, and the results are put
back in the caller's order. Each row stops at an EOS id, at a stop token sequence, at a stop string
(checked on the decoded tail when `stop_strings` and `tokenizer` are given, for strings that
tokenise differently in context) or after max_new_tokens; finished rows are fed `pad_id` and their
tokens ignored, and a batch ends when all of its rows are done.

Returned rows hold the new tokens only, ending with the EOS id / stop tokens that ended them
(included), or max_new_tokens long.
"""
import contextlib

import torch

from model.packed import packed_linears


def generate(model, prompts, max_new_tokens, eos_ids, stop_ids=None, temperature=0.0, top_p=1.0,
             seed=None, batch_size=16, *, stop_strings=None, tokenizer=None, pad_id=0,
             autocast_dtype=None, device=None, pack_weights=True):
    """Generate continuations of token-id prompts; returns list[list[int]] in prompt order.

    eos_ids: int or list of ints; stop_ids: one token sequence (list[int]) or a list of them;
    temperature 0 means greedy; sampling draws from a torch.Generator seeded with `seed` (0 when
    None), so a run is reproducible for the same prompts, batch_size and device.
    pad_id: the token fed for padding and for rows that already finished (never attended to).
    pack_weights: on CPU, run the matmuls on weights prepacked for oneDNN (model/packed.py:
    faster decoding for one extra copy of the weights while generate runs).
    """
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"generate: batch_size must be >= 1, got {batch_size}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
    if stop_strings and tokenizer is None:
        raise ValueError("generate: stop_strings need tokenizer= to decode the generated tail")
    prompts = [list(map(int, p)) for p in prompts]
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"generate: prompt {i} is empty; it needs at least one token")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
    stop_sequences = _stop_sequences(stop_ids)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        packing = packed_linears(model, autocast_dtype) if pack_weights else _plain_output(model)
        with _eager(model), torch.inference_mode(), _autocast(device, autocast_dtype), packing as output:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                rows = _generate_batch(model, output, [prompts[i] for i in chunk], max_new_tokens, eos_ids,
                                       stop_sequences, temperature, top_p, generator,
                                       stop_strings, tokenizer, pad_id, device)
                for i, row in zip(chunk, rows):
                    results[i] = row
    finally:
        model.train(was_training)
    return results


def _stop_sequences(stop_ids):
    if not stop_ids:
        return []
    if all(isinstance(t, int) for t in stop_ids):
        return [list(stop_ids)]
    return [list(s) for s in stop_ids if s]


@contextlib.contextmanager
def _plain_output(model):
    yield lambda hidden: torch.nn.functional.linear(hidden, model.output_weight)


def _eager(model):
    """Blocks torch.compiled for training run eagerly here: every KV-cache step has new shapes and
    cache offsets, so compiled blocks would recompile per step and per layer until dynamo's
    recompile limit (on CUDA each recompile is seconds of Triton builds)."""
    compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
    return torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _left_pad(prompts, pad_id, device):
    """input_ids, positions (0 at each row's first real token) and segment ids (0 pad, 1 real)."""
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max())
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
    offsets = torch.arange(width)[None, :] - (width - lengths)[:, None]
    segment_ids = (offsets >= 0).to(torch.int32)
    positions = offsets.clamp(min=0)
    return input_ids.to(device), positions.to(device), segment_ids.to(device), lengths.to(device)


def _next_token(hidden_last, output, temperature, top_p, generator):
    logits = output(hidden_last).float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return sorted_ids.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _generate_batch(model, output, prompts, max_new_tokens, eos_ids, stop_sequences, temperature, top_p,
                    generator, stop_strings, tokenizer, pad_id, device):
    batch = len(prompts)
    input_ids, positions, segment_ids, lengths = _left_pad(prompts, pad_id, device)
    padded = bool((segment_ids == 0).any())
    cache = model.new_cache(batch, input_ids.shape[1] + max_new_tokens)
    hidden = model(input_ids, positions=positions, segment_ids=segment_ids if padded else None,
                   cache=cache, return_hidden=True)
    out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    stops = [torch.tensor(s, dtype=torch.long, device=device) for s in stop_sequences]
    step_segments = torch.ones(batch, 1, dtype=torch.int32, device=device) if padded else None
    tails = [[] for _ in range(batch)] if stop_strings else None
    window = 4 * max(len(s) for s in stop_strings) if stop_strings else 0
    for step in range(max_new_tokens):
        token = _next_token(hidden[:, -1], output, temperature, top_p, generator)
        token = token.masked_fill(finished, pad_id)
        out[:, step] = token
        done = torch.isin(token, eos) if len(eos_ids) else torch.zeros_like(finished)
        for stop in stops:
            if step + 1 >= len(stop):
                done |= (out[:, step + 1 - len(stop):step + 1] == stop).all(dim=-1)
        if tails is not None:
            done |= _stop_string_hit(token, finished, tails, stop_strings, tokenizer, window, device)
        newly = done & ~finished
        new_lengths = torch.where(newly, step + 1, new_lengths)
        finished |= newly
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        hidden = model(token[:, None], positions=(lengths + step)[:, None],
                       segment_ids=step_segments, cache=cache, return_hidden=True)
    out, new_lengths = out.cpu(), new_lengths.tolist()
    return [out[row, :new_lengths[row]].tolist() for row in range(batch)]


def _stop_string_hit(token, finished, tails, stop_strings, tokenizer, window, device):
    """Rows whose decoded tail now contains a stop string (one decode of a short tail per row)."""
    hits = torch.zeros(len(tails), dtype=torch.bool)
    for row, (t, is_done) in enumerate(zip(token.tolist(), finished.tolist())):
        if is_done:
            continue
        tail = tails[row]
        tail.append(t)
        del tail[:-window]
        text = tokenizer.decode(tail)
        hits[row] = any(s in text for s in stop_strings)
    return hits.to(device)
