"""Acc, Fmt, Score, intervals over seeds and questions, paired tests (numpy-free: math only).

Fmt rule (`format_ok`): the output is the decoded generated text with special tokens removed
(so EOS is not in it). It is well formed iff, after stripping leading/trailing whitespace, it is
exactly `<Thinking>T</Thinking>` + optional whitespace + `<Answer>A</Answer>`, where T and A contain
none of the four tags (so each tag occurs exactly once, in this order), A has a non-space
character, and T may be empty. Text after `</Answer>` (other than whitespace) fails, and so does
text before `<Thinking>`. Tags are case-sensitive.
"""
import math
import re

FORMAT_PATTERN = re.compile(
    r"\s*<Thinking>(?P<thinking>.*?)</Thinking>\s*<Answer>(?P<answer>.*?)</Answer>\s*", re.DOTALL)
TAGS = ("<Thinking>", "</Thinking>", "<Answer>", "</Answer>")
ACC_WEIGHT, FMT_WEIGHT = 0.7, 0.3


def format_ok(output):
    """Whether an output follows <Thinking>...</Thinking><Answer>...</Answer> exactly once."""
    if output is None:
        return False
    match = FORMAT_PATTERN.fullmatch(output)
    if match is None:
        return False
    thinking, answer = match.group("thinking"), match.group("answer")
    if any(tag in thinking or tag in answer for tag in TAGS):
        return False
    return answer.strip() != ""


def mean(values):
    values = list(values)
    if not values:
        raise ValueError("mean: no values")
    return sum(values) / len(values)


def score(acc, fmt):
    """The paper's Score = 0.7 Acc + 0.3 Fmt (report Acc and Fmt next to it)."""
    return ACC_WEIGHT * acc + FMT_WEIGHT * fmt


def _log_beta_continued_fraction(a, b, x):
    """Continued fraction of the regularised incomplete beta (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # the continued fraction converges fast only for x < (a + 1) / (a + b + 2)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _log_beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _log_beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with df > 0 degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_cdf: df must be > 0, got {df}")
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p, df):
    """The p-quantile of Student's t (e.g. t_quantile(0.975, 9) = 2.262157), by bisection."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_ci(values, confidence=0.95):
    """Mean and two-sided Student-t interval: {mean, lo, hi, half_width, std, n}.

    std is the sample standard deviation (n - 1); with n < 2 the interval is NaN.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci: no values")
    center = sum(values) / n
    if n < 2:
        nan = float("nan")
        return {"mean": center, "lo": nan, "hi": nan, "half_width": nan, "std": nan, "n": n}
    std = math.sqrt(sum((v - center) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return {"mean": center, "lo": center - half, "hi": center + half, "half_width": half,
            "std": std, "n": n}


def paired_difference(a, b, confidence=0.95):
    """mean_ci of a[i] - b[i]: two arms measured on the same seeds (index i = seed)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values for the first arm but {len(b)} "
                         "for the second; pair them by seed")
    return mean_ci([x - y for x, y in zip(a, b)], confidence)


def summarise(correct, formatted):
    """Acc, Fmt and Score of one evaluation from per-example booleans."""
    correct, formatted = list(correct), list(formatted)
    if len(correct) != len(formatted):
        raise ValueError(f"summarise: {len(correct)} correct flags but {len(formatted)} format "
                         "flags")
    if not correct:
        return {"n": 0, "acc": float("nan"), "fmt": float("nan"), "score": float("nan")}
    acc, fmt = mean(map(float, correct)), mean(map(float, formatted))
    return {"n": len(correct), "acc": acc, "fmt": fmt, "score": score(acc, fmt)}


def summarise_by_kind(kinds, correct, formatted):
    """summarise() for each answer kind present ({"number": {...}, "choice": {...}})."""
    kinds, correct, formatted = list(kinds), list(correct), list(formatted)
    if not len(kinds) == len(correct) == len(formatted):
        raise ValueError(f"summarise_by_kind: {len(kinds)} kinds, {len(correct)} correct flags, "
                         f"{len(formatted)} format flags")
    return {kind: summarise([c for k, c in zip(kinds, correct) if k == kind],
                            [f for k, f in zip(kinds, formatted) if k == kind])
            for kind in sorted(set(kinds))}


def _check_table(table, name):
    table = [[float(v) for v in row] for row in table]
    if not table or not table[0]:
        raise ValueError(f"{name}: needs at least one seed and one question")
    if any(len(row) != len(table[0]) for row in table):
        raise ValueError(f"{name}: every seed needs the same questions, got row lengths "
                         f"{sorted({len(row) for row in table})}")
    return table, len(table), len(table[0])


def _crossed_variance(table):
    """(mean, seed component, question component) of the grand mean of a seeds x questions table:
    sample variance of the seed means / seeds, population variance of the question means / questions."""
    seeds, questions = len(table), len(table[0])
    grand = sum(map(sum, table)) / (seeds * questions)
    seed_means = [sum(row) / questions for row in table]
    question_means = [sum(col) / seeds for col in zip(*table)]
    seed_part = (sum((m - grand) ** 2 for m in seed_means) / (seeds - 1) / seeds) if seeds > 1 else 0.0
    question_part = sum((m - grand) ** 2 for m in question_means) / questions / questions
    return grand, seed_part, question_part


def _satterthwaite_df(seed_part, question_part, seeds, questions):
    if seed_part + question_part == 0:
        return questions - 1
    denominator = question_part ** 2 / (questions - 1)
    if seeds > 1:
        denominator += seed_part ** 2 / (seeds - 1)
    return (seed_part + question_part) ** 2 / denominator


def proportion_interval(table, confidence=0.95):
    """Mean and 95% interval of a proportion measured on the same questions with several seeds.

    table: one row per seed, one value in [0, 1] per question (1/0 for Acc and Fmt; Score's
    0.7 Acc + 0.3 Fmt per question). The interval is a Wilson score interval on the pooled mean
    p over all seeds x questions, with an effective sample size that carries both sources of
    noise, so it stays inside [0, 1] and keeps its width when the seeds agree:
      variance of p = seed part + question part, the seed part the sample variance of the seed
        means / seeds (training noise), the question part the variance of the per-question means
        over seeds / questions (which questions were drawn; for one seed and 0/1 values it is the
        binomial p(1 - p) / questions); the two share the seed x question residual, which makes
        the sum a slight over-estimate, never an under-estimate;
      effective sample size n_eff = p(1 - p) / variance (Kish's design effect), at most seeds x
        questions; when every value is 0 or every value is 1 (no variance to measure), n_eff =
        questions: seeds that agree on every question count as one replicate of the questions;
      critical value: Student t with Welch-Satterthwaite degrees of freedom of the two parts
        (seeds - 1 when the seed spread dominates, questions - 1 when the questions do);
      interval: (p + c^2 / 2n_eff +- c sqrt(p(1 - p) / n_eff + c^2 / 4n_eff^2)) / (1 + c^2 / n_eff).
    With one seed and 0/1 values this is the textbook Wilson interval (with t_{questions-1}
    instead of z). Returns {mean, lo, hi, n_eff, df, seeds, questions}.
    """
    table, seeds, questions = _check_table(table, "proportion_interval")
    if any(v < 0 or v > 1 for row in table for v in row):
        raise ValueError("proportion_interval: values must lie in [0, 1]")
    p, seed_part, question_part = _crossed_variance(table)
    out = {"mean": p, "seeds": seeds, "questions": questions}
    if questions < 2:
        return {**out, "lo": float("nan"), "hi": float("nan"), "n_eff": float("nan"), "df": float("nan")}
    spread, variance = p * (1 - p), seed_part + question_part
    if spread <= 1e-15:
        n_eff = float(questions)
    elif variance <= 0:
        n_eff = float(seeds * questions)
    else:
        n_eff = min(float(seeds * questions), spread / variance)
    df = _satterthwaite_df(seed_part, question_part, seeds, questions)
    c = t_quantile(0.5 + confidence / 2.0, df)
    shrink = 1.0 + c * c / n_eff
    center = (p + c * c / (2 * n_eff)) / shrink
    half = c * math.sqrt(spread / n_eff + c * c / (4 * n_eff * n_eff)) / shrink
    return {**out, "lo": max(0.0, center - half), "hi": min(1.0, center + half), "n_eff": n_eff, "df": df}


def paired_interval(table_a, table_b, confidence=0.95):
    """Mean and 95% interval of a - b for two arms on the same seeds and questions.

    The per-(seed, question) differences get the variance of proportion_interval (seed part plus
    question part) and a Student t interval with its Satterthwaite degrees of freedom, kept inside
    [-1, 1]. It has zero width only when the two arms differ by the same amount on every question
    of every seed (for 0/1 values: when they agree everywhere), not when the seeds merely agree.
    """
    table_a, seeds, questions = _check_table(table_a, "paired_interval")
    table_b, seeds_b, questions_b = _check_table(table_b, "paired_interval")
    if (seeds, questions) != (seeds_b, questions_b):
        raise ValueError(f"paired_interval: {seeds} x {questions} values for the first arm but "
                         f"{seeds_b} x {questions_b} for the second; pair them by seed and question")
    diff = [[x - y for x, y in zip(ra, rb)] for ra, rb in zip(table_a, table_b)]
    d, seed_part, question_part = _crossed_variance(diff)
    if questions < 2:
        return {"mean": d, "lo": float("nan"), "hi": float("nan"), "df": float("nan")}
    df = _satterthwaite_df(seed_part, question_part, seeds, questions)
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(seed_part + question_part)
    return {"mean": d, "lo": max(-1.0, d - half), "hi": min(1.0, d + half), "df": df}


def mcnemar(correct_a, correct_b):
    """Exact McNemar test of two arms judged on the same (seed, question) pairs, pooled over seeds.

    correct_a, correct_b: seeds x questions tables of 0/1. gained = pairs right under a and wrong
    under b, lost = the reverse; p = two-sided exact binomial test of gained among the discordant
    pairs at 1/2 (min(1, 2 P(X <= min(gained, lost))), X ~ Binomial(gained + lost, 1/2)); 1 with no
    discordant pair. Pooling treats each seed's answer to a question as its own pair, so a question
    that flips in every seed counts once per seed: read p with the interval of paired_interval,
    which accounts for questions shared across seeds.
    """
    table_a, seeds, questions = _check_table(correct_a, "mcnemar")
    table_b, seeds_b, questions_b = _check_table(correct_b, "mcnemar")
    if (seeds, questions) != (seeds_b, questions_b):
        raise ValueError(f"mcnemar: {seeds} x {questions} values for the first arm but "
                         f"{seeds_b} x {questions_b} for the second")
    pairs = [(x, y) for ra, rb in zip(table_a, table_b) for x, y in zip(ra, rb)]
    if any(v not in (0.0, 1.0) for pair in pairs for v in pair):
        raise ValueError("mcnemar: values must be 0 or 1")
    gained = sum(1 for x, y in pairs if x > y)
    lost = sum(1 for x, y in pairs if x < y)
    n = gained + lost
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2 ** n if n else 1.0
    return {"gained": gained, "lost": lost, "p": min(1.0, 2.0 * tail)}
