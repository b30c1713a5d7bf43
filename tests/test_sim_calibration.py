"""The calibration report as a test: held-out error of the shipped coefficients must stay within target.

Split (``calib_cases._split``): rows whose sha256(configuration key) % 4 == 0, ~25% of every source, are
never seen by ``scripts/fit_calibration.py``; the shipped ``calibration.json`` is that training-split fit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuaudit.recommend import calib_cases as cc
from gpuaudit.recommend.calibration import load_calibration
from gpuaudit.recommend.simulator import simulate

# Median absolute % error on the held-out rows: the targets.
TARGET = {"tpot": 10.0, "throughput": 10.0, "ttft": 25.0}


@pytest.fixture(scope="module")
def heldout():
    cal = load_calibration()
    cases = [c for c in cc.load_cases() if c.heldout]
    for c in cases:
        cc.prepare(c, cal)
    return cal, cases


def test_heldout_error_meets_the_targets(heldout):
    cal, cases = heldout
    errors = cc.log_errors(cases, cal, cal.meta["engine_factors"])
    got = cc.median_abs_pct(errors)
    assert {c.source for c in cases} >= {"aic", "trt", "lambda", "mi300x"}
    for metric, limit in TARGET.items():
        assert got[metric] <= limit, f"held-out {metric} error {got[metric]:.1f}% > {limit}%"
    # the shipped file's own report agrees with what we just recomputed
    for metric, value in cal.meta["heldout_median_abs_pct"].items():
        assert got[metric] == pytest.approx(value, abs=0.05)


def test_no_heldout_row_was_fitted(heldout):
    _, cases = heldout
    train_keys = {c.key for c in cc.load_cases() if not c.heldout}
    assert not train_keys & {c.key for c in cases}
    assert 0.2 < len(cases) / (len(cases) + len(train_keys)) < 0.3


def test_retimed_schedule_equals_a_full_simulation(heldout):
    """The fit re-times one recorded schedule per row; that must equal simulating the row outright."""
    cal, cases = heldout
    case = next(c for c in cases if c.source == "aic")
    pred = cc.predict(case, cal)
    res = simulate(case.cfg, case.requests, concurrency=case.concurrency, calibration=cal)
    assert pred["ttft"] == pytest.approx(1000 * float(np.mean(res.ttfts_s)), rel=1e-9)
    tpots = [t for t in res.tpots_s if not math.isnan(t)]
    assert pred["tpot"] == pytest.approx(1000 * float(np.mean(tpots)), rel=1e-9)
