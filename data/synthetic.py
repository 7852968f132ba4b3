"""The built-in task: multi-digit addition chains with running sums as the reasoning.

Problem: "What is 23 + 45 + 12 + 67?"; thinking: one line per step, "23 + 45 = 68\n68 + 12 = 80\n
80 + 67 = 147"; answer: "147". Deterministic, generated locally, split into disjoint train/test
sets by a hash of the problem itself, with a tiny BPE tokenizer (digits one token each, the four
tags as single added tokens) so examples stay around 60-100 tokens.
"""
import hashlib
import json
import os
import random
import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from atomic_io import atomic_write

from .records import Record

TAGS = ("<Thinking>", "</Thinking>", "<Answer>", "</Answer>")
SPECIAL = ("<pad>", "<eos>", "<unk>")
TOKENIZER_CORPUS = ("Problem: What is 1 + 2 - 3?\nSolution:\n", "Question: Answer:\n",
                    "The answer is 3", "Step Total")
MANIFEST_VERSION = 1
DEFAULTS = {"n_terms": 4, "n_digits": 2, "ops": "+", "test_fraction": 0.1}


def problem_split(terms, ops_used, test_fraction):
    """'test' or 'train' from a hash of the problem, so the two sets never share a problem."""
    digest = hashlib.sha256(repr((terms, ops_used)).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def make_problem(rng, n_terms, n_digits, ops):
    """One problem: terms, operators and the step-by-step running results."""
    if isinstance(n_terms, (tuple, list)):
        n_terms = rng.randint(n_terms[0], n_terms[1])
    low = 10 ** (n_digits - 1) if n_digits > 1 else 0
    terms = tuple(rng.randint(low, 10**n_digits - 1) for _ in range(n_terms))
    ops_used = tuple(rng.choice(ops) for _ in range(n_terms - 1))
    return terms, ops_used


def to_record(terms, ops_used, index, split, source):
    expr = str(terms[0]) + "".join(f" {op} {t}" for op, t in zip(ops_used, terms[1:]))
    total, lines = terms[0], []
    for op, t in zip(ops_used, terms[1:]):
        new = total + t if op == "+" else total - t
        lines.append(f"{total} {op} {t} = {new}")
        total = new
    return Record(prompt=f"What is {expr}?", thinking="\n".join(lines), answer=str(total),
                  id=f"synthetic-{split}-{index}", source=source, kind="number")


def generate(n_train, n_test, seed=0, n_terms=DEFAULTS["n_terms"], n_digits=DEFAULTS["n_digits"],
             ops=DEFAULTS["ops"], test_fraction=DEFAULTS["test_fraction"]):
    """(train records, test records): distinct problems, disjoint splits, same for the same args."""
    if not set(ops) <= {"+", "-"} or not ops:
        raise ValueError(f"synthetic task: ops must use '+' and/or '-', got {ops!r}")
    min_terms = n_terms[0] if isinstance(n_terms, (tuple, list)) else n_terms
    if min_terms < 2 or n_digits < 1:
        raise ValueError(f"synthetic task: need n_terms >= 2 and n_digits >= 1, "
                         f"got n_terms={n_terms}, n_digits={n_digits}")
    rng = random.Random(seed)
    want = {"train": n_train, "test": n_test}
    found = {"train": [], "test": []}
    seen = set()
    attempts, max_attempts = 0, 20 * (n_train + n_test) + 1000
    while any(len(found[s]) < want[s] for s in want):
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"synthetic task: could not find {n_train} train + {n_test} test "
                             f"distinct problems with n_terms={n_terms}, n_digits={n_digits}; "
                             "raise the difficulty or ask for fewer")
        terms, ops_used = make_problem(rng, n_terms, n_digits, ops)
        if (terms, ops_used) in seen:
            continue
        seen.add((terms, ops_used))
        split = problem_split(terms, ops_used, test_fraction)
        if len(found[split]) < want[split]:
            found[split].append((terms, ops_used))
    return tuple([to_record(t, o, i, s, f"synthetic-{s}:{i + 1}")
                  for i, (t, o) in enumerate(found[s])] for s in ("train", "test"))


def train_tokenizer():
    """A tiny BPE (~130 tokens) trained on fixed text: the same for every seed and difficulty."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Digits, spaces and punctuation stay single tokens; only letter runs merge into words.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[A-Za-z]+|\d|\s|[^A-Za-z\d\s]"),
                                             behavior="isolated")
    tok.decoder = decoders.Fuse()
    alphabet = [c for c in string.printable if c not in "\x0b\x0c\r"]
    trainer = trainers.BpeTrainer(vocab_size=256, special_tokens=list(SPECIAL),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(list(TOKENIZER_CORPUS) * 4, trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    return tok


def write_tokenizer(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    train_tokenizer().save(os.path.join(out_dir, "tokenizer.json"))
    config = {"eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "bos_token": None,
              "add_bos_token": False, "model_max_length": 512,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({k: config[k] for k in ("eos_token", "pad_token", "unk_token")}, f, indent=1)
    return out_dir


def _write_jsonl(path, records):
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")


def build_task(out_dir, n_train=2000, n_test=200, seed=0, **difficulty):
    """Write train.jsonl, test.jsonl and tokenizer/ under out_dir (reused when the arguments match).

    difficulty: n_terms (int or (min, max)), n_digits, ops ("+" or "+-"), test_fraction.
    Returns {"train": path, "test": path, "tokenizer": dir, "manifest": path}.
    """
    unknown = set(difficulty) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"build_task: unknown difficulty parameter(s) {sorted(unknown)}; "
                        f"known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **difficulty}
    if isinstance(params["n_terms"], tuple):
        params["n_terms"] = list(params["n_terms"])
    manifest = {"version": MANIFEST_VERSION, "n_train": n_train, "n_test": n_test, "seed": seed,
                **params}
    paths = {"train": os.path.join(out_dir, "train.jsonl"),
             "test": os.path.join(out_dir, "test.jsonl"),
             "tokenizer": os.path.join(out_dir, "tokenizer"),
             "manifest": os.path.join(out_dir, "manifest.json")}
    try:
        with open(paths["manifest"]) as f:
            if json.load(f) == manifest and all(os.path.exists(paths[k]) for k in paths):
                return paths
    except (OSError, json.JSONDecodeError):
        pass
    os.makedirs(out_dir, exist_ok=True)
    train, test = generate(n_train, n_test, seed, **params)
    _write_jsonl(paths["train"], train)
    _write_jsonl(paths["test"], test)
    write_tokenizer(paths["tokenizer"])
    with open(paths["manifest"], "w") as f:  # written last: its presence means the rest is done
        json.dump(manifest, f, indent=1)
    return paths
