import math

import pytest

from eval.metrics import (format_ok, mcnemar, mean_ci, paired_difference, paired_interval, proportion_interval,
                          score, summarise, summarise_by_kind, t_cdf, t_quantile)


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


T19 = 2.093024  # t(0.975, 19)


@pytest.mark.parametrize("seeds", [1, 3, 5])
def test_proportion_interval_at_zero_and_all_successes(seeds):
    # 20 questions, every value equal: n_eff = 20 questions, df 19, Wilson at 0 of 20:
    # upper = c^2 / (20 + c^2) = 4.380749 / 24.380749 = 0.179681
    zero = proportion_interval([[0] * 20] * seeds)
    assert zero["mean"] == 0.0 and zero["lo"] == 0.0
    assert zero["hi"] == pytest.approx(0.179681, abs=2e-6)
    assert zero["n_eff"] == 20 and zero["df"] == 19
    full = proportion_interval([[1] * 20] * seeds)
    assert full["hi"] == 1.0 and full["lo"] == pytest.approx(1 - 0.179681, abs=2e-6)


def test_proportion_interval_one_seed_is_wilson():
    # 3 of 10: p = 0.3, n_eff = 10, c = t(0.975, 9) = 2.2621572, c^2 = 5.1173550;
    # center = (0.3 + 5.1173550 / 20) / 1.5117355 = 0.3677017
    # half = 2.2621572 * sqrt(0.021 + 5.1173550 / 400) / 1.5117355 = 0.2750824
    ci = proportion_interval([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    assert ci["n_eff"] == pytest.approx(10) and ci["df"] == 9
    assert (ci["lo"], ci["hi"]) == pytest.approx((0.3677017 - 0.2750824, 0.3677017 + 0.2750824), abs=2e-7)


def test_proportion_interval_seeds_times_questions_hand_computed():
    # seed means 0.5, 0.25: seed part = 0.03125 / 2 = 0.015625; question means 1, .5, 0, 0 around
    # 0.375: question part = 0.171875 / 4 = 0.04296875; n_eff = 0.234375 / 0.05859375 = 4;
    # df = 0.05859375^2 / (0.015625^2 / 1 + 0.04296875^2 / 3) = 3.994083
    ci = proportion_interval([[1, 1, 0, 0], [1, 0, 0, 0]])
    assert ci["mean"] == 0.375 and ci["n_eff"] == pytest.approx(4.0)
    assert ci["df"] == pytest.approx(3.994083, abs=1e-6)
    c = t_quantile(0.975, ci["df"])
    assert 2.776445 < c < 2.7800  # just above t(0.975, 4)
    center = (0.375 + c * c / 8) / (1 + c * c / 4)
    half = c * math.sqrt(0.234375 / 4 + c * c / 64) / (1 + c * c / 4)
    assert (ci["lo"], ci["hi"]) == pytest.approx((center - half, center + half), abs=1e-12)


def test_proportion_interval_keeps_width_when_seeds_agree_and_widens_when_they_do_not():
    agree = proportion_interval([[1, 0, 1, 1, 0] * 4] * 3)
    assert agree["mean"] == 0.6 and agree["hi"] - agree["lo"] > 0.3
    assert 0 <= agree["lo"] < 0.6 < agree["hi"] <= 1
    split = proportion_interval([[1] * 10, [0] * 10])  # seeds disagree: n_eff 1, df 1
    assert split["n_eff"] == pytest.approx(1.0) and split["df"] == pytest.approx(1.0)
    assert 0 <= split["lo"] < 0.01 and 0.99 < split["hi"] <= 1
    with pytest.raises(ValueError, match="same questions"):
        proportion_interval([[1, 0], [1]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        proportion_interval([[2, 0]])


def test_paired_interval_hand_computed():
    # differences [[1,0,0,0],[1,0,0,0]]: mean 0.25, seed part 0, question means 1, 0, 0, 0:
    # question part = 0.1875 / 4 = 0.046875, df 3, half = 3.182446 * sqrt(0.046875) = 0.689018
    d = paired_interval([[1, 1, 0, 0], [1, 0, 0, 0]], [[0, 1, 0, 0], [0, 0, 0, 0]])
    assert d["mean"] == 0.25 and d["df"] == 3
    assert (d["lo"], d["hi"]) == pytest.approx((0.25 - 0.689018, 0.25 + 0.689018), abs=2e-6)
    same = paired_interval([[1, 0, 1]] * 2, [[1, 0, 1]] * 2)
    assert same["lo"] == same["hi"] == 0.0  # agreeing on every question of every seed
    seeds_agree = paired_interval([[1, 0, 1]] * 3, [[0, 0, 1]] * 3)
    assert seeds_agree["hi"] - seeds_agree["lo"] > 0.5  # identical seeds, yet not zero width
    assert -1 <= paired_interval([[1] * 3, [0] * 3], [[0] * 3, [1] * 3])["lo"]
    with pytest.raises(ValueError, match="pair them by seed and question"):
        paired_interval([[1, 0]], [[1, 0, 1]])


def test_mcnemar_exact_small_tables():
    # seed 0: gained 1, lost 3; seed 1: lost 3; p = 2 P(X <= 1 | 7, 1/2) = 2 (1 + 7) / 128
    a = [[1, 0, 0, 0], [0, 0, 0, 1]]
    b = [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert mcnemar(a, b) == {"gained": 1, "lost": 6, "p": 0.125}
    assert mcnemar(b, a) == {"gained": 6, "lost": 1, "p": 0.125}
    assert mcnemar([[0] * 5], [[1] * 5]) == {"gained": 0, "lost": 5, "p": 0.0625}  # 2 / 32
    assert mcnemar([[1, 1, 1, 0, 0, 0]], [[0, 0, 0, 1, 1, 1]])["p"] == 1.0  # 2 * 42 / 64 capped
    assert mcnemar([[1, 0]], [[1, 0]]) == {"gained": 0, "lost": 0, "p": 1.0}
    with pytest.raises(ValueError, match="0 or 1"):
        mcnemar([[0.5]], [[1]])


def test_summarise_by_kind():
    by = summarise_by_kind(["number", "choice", "number", "choice"], [True, False, False, False],
                           [True, True, False, True])
    assert by == {"choice": {"n": 2, "acc": 0.0, "fmt": 1.0, "score": pytest.approx(0.3)},
                  "number": {"n": 2, "acc": 0.5, "fmt": 0.5, "score": pytest.approx(0.5)}}
    with pytest.raises(ValueError, match="kinds"):
        summarise_by_kind(["number"], [True, False], [True, False])
