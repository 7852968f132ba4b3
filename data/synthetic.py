"""The built-in task: multi-digit addition chains with running sums as the reasoning.

Problem: "What is 23 + 45 + 12 + 67?"; thinking: one line per step, "23 + 45 = 68\n68 + 12 = 80\n
80 + 67 = 147". Three kinds:
  number  the answer is the value, "147": a copy of the reasoning's last number;
  choice  the prompt lists four lettered options, the value and three near misses (the value
          +-1, +-2, +-10, or the running sum before the last step), and the answer is the letter
          of the value, "C": a step of its own after the reasoning. Records carry no `choices`,
          so the checker accepts only a letter (writing the option's number is wrong);
  mixed   both in one data set, alternating within each split (exactly half each for even sizes).
Every record carries its kind ("number" or "choice") so metrics can split by it.
Deterministic, generated locally, split into disjoint train / validation / test sets by a hash of
the arithmetic itself (a choice and a number problem with the same terms fall on the same side),
with a tiny BPE tokenizer (digits and letters one token each, the four tags as single added
tokens) so examples stay around 60-110 tokens.
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
MANIFEST_VERSION = 2
DEFAULTS = {"n_terms": 4, "n_digits": 2, "ops": "+", "test_fraction": 0.1, "kind": "number",
            "val_fraction": 0.1}
TASK_KINDS = ("number", "choice", "mixed")
SPLITS = ("train", "val", "test")
# offsets of the near-miss options from the value; the running sum before the last step is one too
NEAR_MISSES = (-10, -2, -1, 1, 2, 10)
OPTION_LETTERS = "ABCD"


def problem_split(terms, ops_used, test_fraction, val_fraction=0.0):
    """'test', 'val' or 'train' from a hash of the problem, so the sets never share a problem.

    The hash lands in [0, 1): test below test_fraction, validation in the next val_fraction,
    train above; with val_fraction 0 the train set is the same as without a validation split.
    """
    digest = hashlib.sha256(repr((terms, ops_used)).encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def make_problem(rng, n_terms, n_digits, ops):
    """One problem: terms, operators and the step-by-step running results."""
    if isinstance(n_terms, (tuple, list)):
        n_terms = rng.randint(n_terms[0], n_terms[1])
    low = 10 ** (n_digits - 1) if n_digits > 1 else 0
    terms = tuple(rng.randint(low, 10**n_digits - 1) for _ in range(n_terms))
    ops_used = tuple(rng.choice(ops) for _ in range(n_terms - 1))
    return terms, ops_used


def options(terms, ops_used, previous, total, seed):
    """(four option values, index of the value): three near misses drawn by a per-problem rng."""
    rng = random.Random(f"{seed}|{terms}|{ops_used}")  # str seeds hash stably across runs
    allow_negative = min(terms) < 0 or "-" in ops_used
    candidates = sorted({total + d for d in NEAR_MISSES} | {previous})
    candidates = [c for c in candidates if c != total and (allow_negative or c >= 0)]
    values = rng.sample(candidates, len(OPTION_LETTERS) - 1)
    where = rng.randrange(len(OPTION_LETTERS))
    values.insert(where, total)
    return values, where


def to_record(terms, ops_used, index, split, source, kind="number", seed=0):
    expr = str(terms[0]) + "".join(f" {op} {t}" for op, t in zip(ops_used, terms[1:]))
    total, lines, previous = terms[0], [], terms[0]
    for op, t in zip(ops_used, terms[1:]):
        new = total + t if op == "+" else total - t
        lines.append(f"{total} {op} {t} = {new}")
        previous, total = total, new
    prompt, answer = f"What is {expr}?", str(total)
    if kind == "choice":
        values, where = options(terms, ops_used, previous, total, seed)
        prompt += "".join(f"\n{letter}. {v}" for letter, v in zip(OPTION_LETTERS, values))
        answer = OPTION_LETTERS[where]
    return Record(prompt=prompt, thinking="\n".join(lines), answer=answer,
                  id=f"synthetic-{split}-{index}", source=source, kind=kind)


def record_kind(task_kind, index):
    """The kind of the index-th problem of a split: mixed alternates number, choice, ..."""
    if task_kind == "mixed":
        return "choice" if index % 2 else "number"
    return task_kind


def generate(n_train, n_test, seed=0, n_terms=DEFAULTS["n_terms"], n_digits=DEFAULTS["n_digits"],
             ops=DEFAULTS["ops"], test_fraction=DEFAULTS["test_fraction"], kind=DEFAULTS["kind"],
             n_val=0, val_fraction=DEFAULTS["val_fraction"]):
    """(train records, test records), plus validation records as a third item when n_val > 0:
    distinct problems, disjoint splits, the same for the same arguments."""
    if not set(ops) <= {"+", "-"} or not ops:
        raise ValueError(f"synthetic task: ops must use '+' and/or '-', got {ops!r}")
    if kind not in TASK_KINDS:
        raise ValueError(f"synthetic task: kind must be one of {TASK_KINDS}, got {kind!r}")
    if n_val and not 0 < val_fraction < 1 - test_fraction:
        raise ValueError(f"synthetic task: n_val={n_val} needs 0 < val_fraction < 1 - test_fraction, "
                         f"got val_fraction={val_fraction}, test_fraction={test_fraction}")
    min_terms = n_terms[0] if isinstance(n_terms, (tuple, list)) else n_terms
    if min_terms < 2 or n_digits < 1:
        raise ValueError(f"synthetic task: need n_terms >= 2 and n_digits >= 1, "
                         f"got n_terms={n_terms}, n_digits={n_digits}")
    rng = random.Random(seed)
    want = {"train": n_train, "val": n_val, "test": n_test}
    found = {s: [] for s in SPLITS}
    seen = set()
    attempts, max_attempts = 0, 20 * (n_train + n_val + n_test) + 1000
    while any(len(found[s]) < want[s] for s in want):
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"synthetic task: could not find {n_train} train + {n_val} validation + "
                             f"{n_test} test distinct problems with n_terms={n_terms}, "
                             f"n_digits={n_digits}; raise the difficulty or ask for fewer")
        terms, ops_used = make_problem(rng, n_terms, n_digits, ops)
        if (terms, ops_used) in seen:
            continue
        seen.add((terms, ops_used))
        split = problem_split(terms, ops_used, test_fraction, val_fraction if n_val else 0.0)
        if len(found[split]) < want[split]:
            found[split].append((terms, ops_used))
    records = {s: [to_record(t, o, i, s, f"synthetic-{s}:{i + 1}", record_kind(kind, i), seed)
                   for i, (t, o) in enumerate(found[s])] for s in SPLITS}
    return (records["train"], records["test"]) + ((records["val"],) if n_val else ())


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


def build_task(out_dir, n_train=2000, n_test=200, seed=0, n_val=0, **difficulty):
    """Write train.jsonl, test.jsonl, tokenizer/ and, when n_val > 0, val.jsonl under out_dir
    (reused when the arguments match).

    difficulty: n_terms (int or (min, max)), n_digits, ops ("+" or "+-"), test_fraction, kind
    ("number", "choice" or "mixed"), val_fraction (the hash band of the validation split).
    Returns {"train": path, "test": path, "tokenizer": dir, "manifest": path} and "val" with n_val.
    """
    unknown = set(difficulty) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"build_task: unknown difficulty parameter(s) {sorted(unknown)}; "
                        f"known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **difficulty}
    if isinstance(params["n_terms"], tuple):
        params["n_terms"] = list(params["n_terms"])
    manifest = {"version": MANIFEST_VERSION, "n_train": n_train, "n_test": n_test, "n_val": n_val,
                "seed": seed, **params}
    paths = {"train": os.path.join(out_dir, "train.jsonl"),
             "test": os.path.join(out_dir, "test.jsonl"),
             "tokenizer": os.path.join(out_dir, "tokenizer"),
             "manifest": os.path.join(out_dir, "manifest.json")}
    if n_val:
        paths["val"] = os.path.join(out_dir, "val.jsonl")
    try:
        with open(paths["manifest"]) as f:
            if json.load(f) == manifest and all(os.path.exists(paths[k]) for k in paths):
                return paths
    except (OSError, json.JSONDecodeError):
        pass
    os.makedirs(out_dir, exist_ok=True)
    splits = generate(n_train, n_test, seed, n_val=n_val, **params)
    for name, records in zip(("train", "test", "val"), splits):
        _write_jsonl(paths[name], records)
    write_tokenizer(paths["tokenizer"])
    with open(paths["manifest"], "w") as f:  # written last: its presence means the rest is done
        json.dump(manifest, f, indent=1)
    return paths
