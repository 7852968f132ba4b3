"""Acc, Fmt, Score and Student-t confidence intervals (numpy-free: math only).

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
