import math

import pytest

from eval.metrics import format_ok, mean_ci, paired_difference, score, summarise, t_cdf, t_quantile


@pytest.mark.parametrize("output,ok", [
    ("<Thinking>3+4=7</Thinking><Answer>7</Answer>", True),
    ("<Thinking> 3+4=7 </Thinking> <Answer> 7 </Answer>", True),
    ("\n<Thinking>a\nb</Thinking>\n<Answer>7</Answer>\n", True),
    ("<Thinking></Thinking><Answer>7</Answer>", True),
    ("<Thinking>x</Thinking><Answer>  </Answer>", False),
    ("<Thinking>x</Thinking><Answer>7", False),
    ("<Thinking>x</Thinking><Answer>5</Answer><Answer>6</Answer>", False),
    ("<Thinking>x</Thinking><Thinking>y</Thinking><Answer>6</Answer>", False),
    ("<Thinking>x <Answer>1</Answer></Thinking><Answer>6</Answer>", False),
    ("Sure! <Thinking>x</Thinking><Answer>6</Answer>", False),
    ("<Thinking>x</Thinking><Answer>6</Answer> Hope this helps", False),
    ("<Answer>6</Answer><Thinking>x</Thinking>", False),
    ("<Thinking>x</Thinking>middle<Answer>6</Answer>", False),
    ("<thinking>x</thinking><answer>6</answer>", False),
    ("The answer is 6", False),
    ("", False),
    (None, False),
])
def test_format_ok(output, ok):
    assert format_ok(output) is ok


@pytest.mark.parametrize("p,df,expected", [
    (0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 3, 3.182446), (0.975, 4, 2.776445),
    (0.975, 9, 2.262157), (0.975, 29, 2.045230), (0.975, 120, 1.979930),
    (0.95, 5, 2.015048), (0.995, 4, 4.604095), (0.9, 1, 3.077684),
    (0.975, math.inf, 1.959964), (0.025, 2, -4.302653), (0.5, 7, 0.0),
])
def test_t_quantile_known_values(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-6)


def test_t_cdf_closed_forms():
    # df = 1 is Cauchy, df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_t_quantile_rejects_bad_p():
    with pytest.raises(ValueError, match="p must be"):
        t_quantile(1.0, 3)


def test_mean_ci_hand_computed():
    # values 0.60, 0.70, 0.80: mean 0.7, s = 0.1, half width = 4.302653 * 0.1 / sqrt(3)
    ci = mean_ci([0.6, 0.7, 0.8])
    assert ci["mean"] == pytest.approx(0.7)
    assert ci["std"] == pytest.approx(0.1)
    assert ci["half_width"] == pytest.approx(0.248414, abs=1e-6)
    assert (ci["lo"], ci["hi"]) == pytest.approx((0.451586, 0.948414), abs=1e-6)
    assert ci["n"] == 3


def test_mean_ci_one_value_has_no_interval_and_zero_spread_has_zero_width():
    one = mean_ci([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["half_width"])
    same = mean_ci([0.5, 0.5, 0.5])
    assert same["half_width"] == 0.0 and same["lo"] == same["hi"] == 0.5
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_paired_difference_hand_computed():
    method = [0.62, 0.70, 0.66, 0.71]
    baseline = [0.60, 0.65, 0.66, 0.67]
    # differences 0.02, 0.05, 0.00, 0.04: mean 0.0275, s = 0.0221736, t(0.975, 3) = 3.182446
    diff = paired_difference(method, baseline)
    assert diff["mean"] == pytest.approx(0.0275)
    assert diff["std"] == pytest.approx(0.02217356, abs=1e-8)
    assert diff["half_width"] == pytest.approx(3.182446 * 0.02217356 / 2, abs=1e-6)
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_difference([1, 2], [1])


def test_score_and_summarise():
    assert score(0.5, 1.0) == pytest.approx(0.65)
    stats = summarise([True, False, True, True], [True, True, False, True])
    assert stats == {"n": 4, "acc": 0.75, "fmt": 0.75, "score": pytest.approx(0.75)}
    assert math.isnan(summarise([], [])["acc"])
