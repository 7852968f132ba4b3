"""Answer extraction and comparison.

Extraction (`extract(text, style) -> (answer or None, rule)`):

tagged style: the block closed first. We find the first `</Answer>` after an `<Answer>` and take
the text after the nearest `<Answer>` before it, stripped (a `</Answer>` with no opening tag before
it is skipped); generation stops at `</Answer>` too, so a second block is never read (`<Answer>5</Answer><Answer>6</Answer>` -> "5"; a stray `<Answer>` in the reasoning
before the real block is skipped). No `</Answer>` at all but an `<Answer>`: the text after the
last `<Answer>` to the end, stripped (rule "unclosed"; Fmt marks such outputs as badly formed,
Acc still judges what the model wrote). No `<Answer>`: None. Tags are matched exactly
(case-sensitive), as trained; there is no fall-back to the plain rules.

plain style, first rule that finds something wins:
  1. "phrase": the last answer phrase ("The answer is", "The final answer is", "The correct answer
     is", or "Answer:" / "Final answer:" starting a line; "our answer is correct" is none), taking
     the rest of its line up to the first sentence end (". "), e.g. "The answer is 42." -> "42";
     when that text holds a `\\boxed{}`, its content ("The answer is $3! \\times 5! = \\boxed{720}$"
     -> "720"); a phrase whose line ends in display math (`\\[` or `$$`) reads the display block;
  2. "hashes": the rest of the line after the last `####` (GSM8K style);
  3. "boxed": the content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces balanced);
  4. "last_number": the last number in the text (thousands commas, decimals, a/b fractions).

Comparison (`is_correct(predicted, reference, kind=None, choices=None)`), by the reference kind
("number" | "latex" | "choice" | "text"; `detect_kind` guesses when it is None):
  number: both sides parse to exact rationals (`parse_number`): `$`, `\\$`, thousands commas,
     `{,}`, `,\\!` thin spaces (`11,\\! 111`), trailing zeros, `a/b`, `\\frac{a}{b}`, `\\frac12`,
     unicode minus, `$...$`, `\\boxed{}`, `\\text{}`, a leading "x =" and up to three trailing unit
     words ("42 apples", "5 cm^2") are handled; "5 million" is scaled, not stripped; a trailing `%`
     is dropped, and when exactly one side has `%` the value / 100 is accepted too (25% == 0.25). A
     prediction that does not parse is retried without a leading answer phrase ("The answer is
     42"). Equality is exact.
  latex: math-verify's `verify(parse(gold), parse(pred))` when math_verify is installed; otherwise
     numeric equality if both sides parse, else equality of a normalised LaTeX string (no spaces,
     `\\left`/`\\right`/`\\dfrac`/`\\tfrac`/`\\text{}`/degree signs removed, `\\frac12` ->
     `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`).
  choice: both sides map to a letter: `B`, `(B)`, `B.`, `B)`, `Answer: B`, `The answer is (B)`,
     `B. <text>`, or (with choices) the text of a choice, case- and punctuation-insensitively.
  text: case-insensitive equality after collapsing spaces, dropping spaces around operators and
     brackets (`p - q` == `p-q`, `-2 + 7i` == `-2+7i`) and stripping outer punctuation, quotes and
     `$`; numeric equality when both sides parse as numbers.
"""
import re
from fractions import Fraction

ANSWER_OPEN, ANSWER_CLOSE = "<Answer>", "</Answer>"
KINDS = ("number", "latex", "choice", "text")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_IN_TEXT = re.compile(rf"(?<![\w.,])-?(?:{_NUM})(?:/(?:{_NUM}))?(?!\d)")
_PHRASE = re.compile(r"(?:\bthe\s+(?:final\s+|correct\s+)?answer\s+is\b\s*:?"
                     r"|(?:^[ \t*#]*|\bfinal\s+)answer\s*:)\**", re.IGNORECASE | re.MULTILINE)
_DISPLAY_CLOSE = {"\\[": "\\]", "$$": "$$"}
_OPERATOR_SPACES = re.compile(r"\s*([-+*/=^<>()\[\],])\s*")
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9,
           "trillion": 10**12, "dozen": 12}
_SIMPLE_NUMBER = re.compile(rf"^([-+]?)\s*({_NUM})$")
_SLASH_FRACTION = re.compile(rf"^([-+]?)\s*({_NUM})\s*/\s*({_NUM})$")
_LATEX_FRACTION = re.compile(r"^([-+]?)\s*\\frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}$")
_UNIT_SUFFIX = re.compile(r"^(.*?[\d}])\s*((?:[A-Za-z]+\.?\s*){1,3}(?:\^?[23²³])?)$")
_ASSIGNMENT_PREFIX = re.compile(r"^[A-Za-z]\w*\s*=\s*")


def extract(text, style="tagged"):
    """(answer string or None, rule that found it); see the module docstring for the rules."""
    if text is None:
        return None, "none"
    if style == "tagged":
        return _extract_tagged(text)
    if style == "plain":
        return _extract_plain(text)
    raise ValueError(f"extract: style must be 'tagged' or 'plain', got {style!r}")


def extract_answer(text, style="tagged"):
    return extract(text, style)[0]


def _extract_tagged(text):
    first_open = text.find(ANSWER_OPEN)
    if first_open < 0:
        return None, "none"
    close = text.find(ANSWER_CLOSE, first_open)
    if close >= 0:
        open_ = text.rfind(ANSWER_OPEN, 0, close)
        return text[open_ + len(ANSWER_OPEN):close].strip(), "answer_tag"
    open_ = text.rfind(ANSWER_OPEN)
    return text[open_ + len(ANSWER_OPEN):].strip(), "unclosed"


def _extract_plain(text):
    phrases = list(_PHRASE.finditer(text))
    if phrases:
        candidate = _phrase_answer(text[phrases[-1].end():])
        if candidate:
            return candidate, "phrase"
    hashes = text.rfind("####")
    if hashes >= 0:
        candidate = _first_sentence(text[hashes + 4:])
        if candidate:
            return candidate, "hashes"
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip(), "boxed"
    numbers = _NUMBER_IN_TEXT.findall(text)
    if numbers:
        return numbers[-1], "last_number"
    return None, "none"


def _phrase_answer(rest):
    """What an answer phrase introduces: its line (or display block), or the \\boxed{} inside."""
    lines = rest.lstrip().split("\n", 1)
    line = lines[0].strip()
    for opener, closer in _DISPLAY_CLOSE.items():
        before = line[:-len(opener)]
        balanced = before.count(opener) % 2 == 0 if opener == closer else before.count(opener) == before.count(closer)
        if line.endswith(opener) and balanced:  # an opened display block: read up to its closer
            block = lines[1] if len(lines) > 1 else ""
            line = before + block.split(closer, 1)[0]
    boxed = last_boxed(line)
    if boxed is not None:
        return boxed.strip()
    return _first_sentence(line)


def _first_sentence(rest):
    line = rest.strip().split("\n", 1)[0]
    # "42. Next ..." ends at the period; "5.5" and "\frac{1}{2}." keep their digits
    line = re.split(r"\.\s", line, maxsplit=1)[0]
    return line.strip().rstrip(".").strip()


def last_boxed(text):
    """Content of the last \\boxed{...} or \\fbox{...} (nested braces balanced), else None."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for match in reversed(starts):
        content = _balanced(text, match.end())
        if content is not None:
            return content
    bare = list(re.finditer(r"\\boxed\s+([^\s$]+)", text))
    return bare[-1].group(1) if bare else None


def _balanced(text, start):
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _unwrap(s):
    """Strip math delimiters and wrappers that carry no value: $..$, \\(..\\), \\boxed{}, \\text{}."""
    s = s.strip()
    for _ in range(4):
        before = s
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and s.count("$") in (2, 4):
            s = s.strip("$").strip()
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right):
                s = s[len(left):-len(right)].strip()
        boxed = re.match(r"^\\(?:boxed|fbox)\s*\{", s)
        if boxed and _balanced(s, boxed.end()) == s[boxed.end():-1]:
            s = s[boxed.end():-1].strip()
        s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
        if s == before:
            break
    return s


def parse_number(text):
    """Exact value of a number-like answer as a Fraction, or None (see the module docstring)."""
    value, _ = _parse_number_and_percent(text)
    return value


def _parse_number_and_percent(text):
    if text is None:
        return None, False
    s = _unwrap(str(text))
    s = s.replace("−", "-").replace("–", "-").replace("{,}", ",").replace("\\$", "$")
    s = re.sub(r"\\!\s*", "", s.replace("\\%", "%")).replace("\\,", "").replace("\\ ", " ")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = s.strip().rstrip(".").strip()
    s = _ASSIGNMENT_PREFIX.sub("", s)
    s = re.sub(r"^([-+]?)\s*(?:[$£€¥]|USD\s*)\s*", r"\1", s)
    percent = False
    if s.endswith("%"):
        percent, s = True, s[:-1].strip()
    elif re.search(r"\s(?:percent|per\s*cent)$", s, re.IGNORECASE):
        percent, s = True, re.sub(r"\s(?:percent|per\s*cent)$", "", s, flags=re.IGNORECASE)
    scale = 1
    suffix = _UNIT_SUFFIX.match(s)
    if suffix:
        words = suffix.group(2).split()
        scale = _SCALES.get(words[0].lower().rstrip("s."), 1)
        if scale != 1 and len(words) > 1:
            return None, percent
        s = suffix.group(1).strip()
        if s.endswith("%"):
            percent, s = True, s[:-1].strip()
    value = _parse_plain_number(s)
    return (None if value is None else value * scale), percent


def _parse_plain_number(s):
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
    match = _SIMPLE_NUMBER.match(s)
    if match:
        return _signed(match.group(1), _fraction(match.group(2)))
    match = _SLASH_FRACTION.match(s) or _LATEX_FRACTION.match(s)
    if match:
        numerator, denominator = _fraction(match.group(2)), _fraction(match.group(3))
        if numerator is None or denominator in (None, 0):
            return None
        return _signed(match.group(1), numerator / denominator)
    return None


def _fraction(token):
    token = token.strip()
    if not re.fullmatch(_NUM, token):
        inner = _SIMPLE_NUMBER.match(token)
        if not inner:
            return None
        return _signed(inner.group(1), _fraction(inner.group(2)))
    return Fraction(token.replace(",", ""))


def _signed(sign, value):
    if value is None:
        return None
    return -value if sign == "-" else value


def numbers_equal(predicted, reference):
    """Exact numeric equality; `%` on exactly one side also accepts value / 100."""
    pred, pred_percent = _parse_number_and_percent(predicted)
    if pred is None:
        pred, pred_percent = _parse_number_and_percent(_strip_phrase(predicted))
    ref, ref_percent = _parse_number_and_percent(reference)
    if pred is None or ref is None:
        return False
    if pred == ref:
        return True
    if pred_percent and not ref_percent:
        return pred / 100 == ref
    if ref_percent and not pred_percent:
        return ref / 100 == pred
    return False


def _strip_phrase(text):
    if text is None:
        return None
    match = re.match(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*:?|:)\s*", text, re.IGNORECASE)
    return _first_sentence(text[match.end():]) if match else text


def choice_letter(text, choices=None):
    """The letter a multiple-choice answer names, or None (see the module docstring)."""
    if text is None:
        return None
    s = _unwrap(_strip_phrase(str(text)).strip())
    allowed = LETTERS[:len(choices)] if choices else LETTERS
    bare = re.fullmatch(r"\(?([A-Za-z])\)?[.:)]?", s)
    if bare and bare.group(1).upper() in allowed:
        return bare.group(1).upper()
    named = re.fullmatch(r"(?:the\s+)?(?:correct\s+)?(?:option|choice)\s*:?\s*\(?([A-Z])\)?\.?",
                         s, re.IGNORECASE)
    if named and named.group(1).upper() in allowed:
        return named.group(1).upper()
    if choices:
        wanted = _normalise_text(s)
        for letter, choice in zip(allowed, choices):
            if _normalise_text(str(choice)) == wanted:
                return letter
    labelled = re.match(r"^\(?([A-Z])\)?[.:)]\s+(\S.*)$", s)
    if labelled and labelled.group(1) in allowed:
        letter = labelled.group(1)
        # "B. Paris" names B only if Paris is B's text (when the choices are known)
        if not choices or _normalise_text(labelled.group(2)) == _normalise_text(
                str(choices[allowed.index(letter)])):
            return letter
    return None


def _normalise_text(text):
    s = _unwrap(str(text)).lower()
    s = _OPERATOR_SPACES.sub(r"\1", re.sub(r"\s+", " ", s)).strip()
    return s.strip(" .,;:!?\"'`").strip()


def normalise_latex(text):
    """A canonical string for LaTeX answers when math-verify is not installed."""
    s = _unwrap(str(text))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("−", "-")
    s = re.sub(r"\\[!,;: ]", "", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\d)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    return s.rstrip(".")


def _math_verify_equal(predicted, reference):
    """True/False from math-verify, or None when it is not installed or fails on this input."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    try:
        gold = parse(reference if "$" in reference else f"${reference}$")
        pred = parse(predicted if "$" in predicted else f"${predicted}$")
        return bool(verify(gold, pred))
    except Exception:
        return None


def detect_kind(reference, choices=None):
    """Guess the kind of a reference answer: choice, number, latex or text."""
    ref = str(reference).strip()
    if choices and choice_letter(ref, choices) is not None:
        return "choice"
    if re.fullmatch(r"\(?[A-J]\)?", ref):
        return "choice"
    if parse_number(ref) is not None:
        return "number"
    if re.search(r"[\\^_{}]", ref):
        return "latex"
    return "text"


def is_correct(predicted, reference, kind=None, choices=None):
    """Whether an extracted answer matches the reference (None never does)."""
    if predicted is None or reference is None:
        return False
    predicted, reference = str(predicted), str(reference)
    kind = kind or detect_kind(reference, choices)
    if kind not in KINDS:
        raise ValueError(f"is_correct: kind must be one of {KINDS}, got {kind!r}")
    if kind == "number":
        return numbers_equal(predicted, reference)
    if kind == "choice":
        ref_letter = choice_letter(reference, choices)
        if ref_letter is None:
            return _normalise_text(predicted) == _normalise_text(reference)
        return choice_letter(predicted, choices) == ref_letter
    if kind == "latex":
        verdict = _math_verify_equal(predicted, reference)
        if verdict is not None:
            return verdict
        if numbers_equal(predicted, reference):
            return True
        return normalise_latex(_strip_phrase(predicted)) == normalise_latex(reference)
    if numbers_equal(predicted, reference):
        return True
    return _normalise_text(_strip_phrase(predicted)) == _normalise_text(reference)
