"""Proxy -> full-budget extrapolation (search/budget/extrapolate.py) on curves with a known answer."""

import math

import pytest

from search.budget.extrapolate import constant_lr_reports, extrapolate, fit_curve, fit_gap_growth, spearman


def test_a_power_law_curve_is_recovered_and_extrapolated():
    truth = lambda s: 2.0 + 3.0 * s ** -0.6  # noqa: E731
    steps = [5, 10, 15, 20, 25, 30, 35, 40]
    fit = fit_curve(steps, [truth(s) for s in steps])
    assert abs(fit.c - 0.6) < 1e-9 and abs(fit(200) - truth(200)) < 1e-9
    # The proxy scored 0.05 under its curve (its warmdown) with a gap of 0.01: both carry over, the gap grown.
    history = [(s, truth(s)) for s in steps]
    out = extrapolate(history, warmup=0, warmdown_start=40, proxy=50, target=200, post=truth(50) - 0.05 + 0.01, gap=0.01, gamma=0.5)
    assert out["post"] == pytest.approx(truth(200) - 0.05 + 0.02) and out["gap_growth"] == pytest.approx(0.01)


def test_reports_in_the_warmdown_are_left_out_when_enough_remain():
    history = [(s, 1.0) for s in (5, 10, 15, 20, 25)]
    assert [s for s, _ in constant_lr_reports(history, warmup=5, warmdown_start=20)] == [10, 15, 20]
    assert len(constant_lr_reports(history, warmup=0, warmdown_start=8)) == 5  # one point left: use them all


def test_gap_growth_and_rank_correlation():
    assert fit_gap_growth([(0.01, 0.02), (0.02, 0.04), (0.01, -0.01)], 4.0) == pytest.approx(0.5)
    assert fit_gap_growth([], 4.0) == 0.0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isclose(spearman([1, 2, 2, 3], [1, 2, 3, 4]), 0.9486832980505138)
    with pytest.raises(ValueError, match="at least 2 reports"):
        fit_curve([5], [1.0])
