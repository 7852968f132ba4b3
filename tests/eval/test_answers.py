import sys

import pytest

from eval.answers import (choice_letter, detect_kind, extract, extract_answer, is_correct,
                          last_boxed, parse_number)

TAGGED = [
    # (output, expected answer, rule)
    ("<Thinking>3 + 4 = 7</Thinking><Answer>7</Answer>", "7", "answer_tag"),
    ("<Thinking>She had 12 apples and gave 5.</Thinking> <Answer> 7 </Answer>", "7", "answer_tag"),
    # a number inside the reasoning is never read
    ("<Thinking>Total is 120 minus 20 = 100</Thinking><Answer>$100</Answer>", "$100", "answer_tag"),
    # two blocks: the first closed block wins (generation stops there too)
    ("<Thinking>x</Thinking><Answer>5</Answer><Answer>6</Answer>", "5", "answer_tag"),
    # a stray <Answer> in the reasoning: the nearest opening before the first closing tag
    ("<Thinking>I will put it in <Answer> later</Thinking><Answer>9</Answer>", "9", "answer_tag"),
    # missing closing tag: the rest after the last <Answer>
    ("<Thinking>2*21</Thinking><Answer>42", "42", "unclosed"),
    ("<Thinking>2*21</Thinking><Answer>41<Answer> 42\n", "42", "unclosed"),
    ("<Thinking>no answer block at all, 42</Thinking>", None, "none"),
    ("</Answer> only a closing tag", None, "none"),
    ("</Answer> a stray closing tag, then <Answer>5</Answer>", "5", "answer_tag"),
    ("<answer>7</answer>", None, "none"),
    ("", None, "none"),
]

PLAIN = [
    ("Natalia sold 48 clips in April and 24 in May.\nThe answer is 72", "72", "phrase"),
    ("So 3 + 4 = 7.\nThe answer is 7. I hope this helps, 10/10", "7", "phrase"),
    ("First the answer is 3, wait.\nThe final answer is $\\frac{1}{2}$.", "$\\frac{1}{2}$", "phrase"),
    ("Final Answer: The final answer is $5$. I hope it is correct.", "$5$", "phrase"),
    ("Answer: B", "B", "phrase"),
    # a \boxed{} inside the phrase's sentence holds the answer
    ("So the answer is $3! \\times 5! = \\boxed{720}$.", "720", "phrase"),
    ("The answer is $\\boxed{\\text{(C)}}.$", "\\text{(C)}", "phrase"),
    ("The final answer is \\boxed{\\frac{1}{2}}. I hope it is correct.", "\\frac{1}{2}", "phrase"),
    # a phrase that opens display math reads the display block
    ("Hence the answer is \\[\n 2^{10} = \\boxed{1024}.\\]", "1024", "phrase"),
    ("The answer is $$\nx = 3\n$$", "x = 3", "phrase"),
    # "answer is" with no "the", or "answer:" inside a sentence, is no answer phrase
    ("Thus \\boxed{44}. We may check: 17 * 44 = 748, so our answer is correct.", "44", "boxed"),
    ("Using this we get our answer: \\[ 1^{55} = \\boxed{1}.\\]", "1", "boxed"),
    ("**Final Answer:** 12", "12", "phrase"),
    ("The correct answer is (B)", "(B)", "phrase"),
    ("He pays 2 * 5 = <<2*5=10>>10 dollars.\n#### 10", "10", "hashes"),
    ("#### 1,000\nsome trailing text 3", "1,000", "hashes"),
    ("So $x = \\boxed{\\frac{1}{2}}$ and then \\boxed{\\frac{3}{\\sqrt{4}}}", "\\frac{3}{\\sqrt{4}}",
     "boxed"),
    ("the area is \\boxed{\\{1, 2\\}}", "\\{1, 2\\}", "boxed"),
    ("He runs 3 km, then 4 km, in total 7 km.", "7", "last_number"),
    ("It costs $1,250.50 in total.", "1,250.50", "last_number"),
    ("The temperature dropped to -5 degrees.", "-5", "last_number"),
    ("So she eats 3/4 of the pie.", "3/4", "last_number"),
    ("5-3=2", "2", "last_number"),
    ("no numbers here", None, "none"),
]


@pytest.mark.parametrize("output,expected,rule", TAGGED)
def test_tagged_extraction(output, expected, rule):
    assert extract(output, "tagged") == (expected, rule)


@pytest.mark.parametrize("output,expected,rule", PLAIN)
def test_plain_extraction(output, expected, rule):
    assert extract(output, "plain") == (expected, rule)


def test_plain_rule_order_phrase_before_hashes_before_boxed_before_number():
    text = "\\boxed{1} #### 2\nThe answer is 3\n4"
    assert extract(text, "plain") == ("3", "phrase")
    assert extract("\\boxed{1} #### 2\n4", "plain") == ("2", "hashes")
    assert extract("\\boxed{1} then 4", "plain") == ("1", "boxed")


def test_bad_style_names_it():
    with pytest.raises(ValueError, match="style"):
        extract("x", "tagd")


def test_last_boxed_unbalanced_falls_back_to_earlier():
    assert last_boxed("\\boxed{2} and \\boxed{3") == "2"
    assert last_boxed("\\boxed 5") == "5"
    assert last_boxed("nothing") is None


NUMBERS = [
    ("1,000", "1000", True),
    ("$1,000.00", "1000", True),
    ("\\$18", "18", True),
    ("5.0", "5", True),
    ("5.00", "5", True),
    ("5.01", "5", False),
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\frac12", "0.5", True),
    ("\\dfrac{1}{2}", "1/2", True),
    ("$\\frac{1}{2}$", "0.5", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("-5", "-5", True),
    ("−5", "-5", True),
    ("-5", "5", False),
    ("50%", "50", True),
    ("25%", "0.25", True),
    ("0.25", "25%", True),
    ("42 apples", "42", True),
    ("18 dollars per hour", "18", True),
    ("5 cm^2", "5", True),
    ("5 million", "5000000", True),
    ("5 million", "5", False),
    ("x = 5", "5", True),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100", True),
    ("11,\\!111", "11111", True),
    ("11\\,111", "11111", True),
    ("\\boxed{7}", "7", True),
    ("The answer is 42", "42", True),
    ("between 3 and 5", "5", False),
    ("3 or 5", "3", False),
    ("1,00", "100", False),
    ("12", "1,2", False),
    ("7", "7.0", True),
    ("0.333", "1/3", False),
    (None, "5", False),
]


@pytest.mark.parametrize("predicted,reference,expected", NUMBERS)
def test_number_comparison(predicted, reference, expected):
    assert is_correct(predicted, reference, kind="number") is expected


def test_parse_number_exact_values():
    from fractions import Fraction
    assert parse_number("1,234,567.50") == Fraction(2469135, 2)
    assert parse_number("\\frac{10}{4}") == Fraction(5, 2)
    assert parse_number("1/0") is None
    assert parse_number("abc") is None
    assert parse_number("2 dozen") == 24


CHOICES = ["Paris", "London", "Rome", "Berlin"]
CHOICE_CASES = [
    ("B", "B", True),
    ("(B)", "B", True),
    ("B.", "B", True),
    ("B)", "B", True),
    ("b", "B", True),
    ("Answer: B", "B", True),
    ("The answer is (B)", "B", True),
    ("Option B", "B", True),
    ("B. London", "B", True),
    ("(B) London", "B", True),
    ("London", "B", True),
    ("london.", "B", True),
    ("Paris", "B", False),
    ("C", "B", False),
    ("B. Paris", "B", False),  # label and text disagree: not counted
    ("E", "B", False),  # no choice E
    ("B", "London", True),  # reference given as the choice text
    ("A train", "A", False),
]


@pytest.mark.parametrize("predicted,reference,expected", CHOICE_CASES)
def test_choice_comparison(predicted, reference, expected):
    assert is_correct(predicted, reference, kind="choice", choices=CHOICES) is expected


def test_choice_letter_without_choices():
    assert choice_letter("(C)") == "C"
    assert choice_letter("C. something") == "C"
    assert choice_letter("the cat") is None


def test_latex_without_math_verify_uses_normalised_strings(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import fails as if not installed
    assert is_correct("\\frac12", "\\frac{1}{2}", kind="latex")
    assert is_correct("0.5", "\\frac{1}{2}", kind="latex")
    assert is_correct("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", kind="latex")
    assert is_correct("$\\sqrt2$", "\\sqrt{2}", kind="latex")
    assert is_correct("90^\\circ", "90", kind="latex")
    assert is_correct("\\dfrac{\\pi}{4}", "\\frac{\\pi}{4}", kind="latex")
    assert not is_correct("\\frac{\\pi}{3}", "\\frac{\\pi}{4}", kind="latex")


def test_latex_with_math_verify_decides():
    pytest.importorskip("math_verify")
    assert is_correct("\\frac{2}{4}", "\\frac{1}{2}", kind="latex")  # equal values, different strings
    assert is_correct("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)", kind="latex")
    assert not is_correct("(2,\\infty)", "(2,\\iny)", kind="latex")  # a mangled reference stays wrong


def test_text_comparison():
    assert is_correct("Yes.", "yes", kind="text")
    assert is_correct("  New   York ", "new york", kind="text")
    assert not is_correct("no", "yes", kind="text")
    assert is_correct("p - q", "p-q", kind="text")  # spaces around operators carry nothing
    assert is_correct("-2 + 7i", "-2+7i", kind="text")
    assert is_correct("f(x) = x + 1", "f(x)=x+1", kind="text")
    assert not is_correct("p - q", "q-p", kind="text")
    assert not is_correct("new york", "newyork", kind="text")  # spaces between words still count
    assert is_correct("The answer is yes", "Yes", kind="text")


@pytest.mark.parametrize("reference,choices,kind", [
    ("72", None, "number"), ("-3.5", None, "number"), ("1,000", None, "number"),
    ("\\frac{\\pi}{2}", None, "latex"), ("x^2+1", None, "latex"), ("B", None, "choice"),
    ("London", CHOICES, "choice"), ("yes", None, "text"), ("3/4", None, "number"),
])
def test_detect_kind(reference, choices, kind):
    assert detect_kind(reference, choices) == kind


def test_auto_kind_in_is_correct():
    assert is_correct("1,000", "1000")
    assert is_correct("(B)", "B")
    assert not is_correct("A", "B")


def test_bad_kind_names_it():
    with pytest.raises(ValueError, match="kind"):
        is_correct("1", "1", kind="numeric")


def test_end_to_end_extract_then_compare():
    out = "<Thinking>12 * 5 = 60, minus 10 is 50</Thinking><Answer>$50.00</Answer>"
    assert is_correct(extract_answer(out, "tagged"), "50", kind="number")
    plain = "12 * 5 = 60, minus 10 is 50.\nThe answer is 50 dollars."
    assert is_correct(extract_answer(plain, "plain"), "50", kind="number")
