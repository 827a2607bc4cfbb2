"""Fixed and adaptive KL controllers, stepped by hand."""

from __future__ import annotations

import pytest

from lightrft_core.algorithms import (
    KL_CONTROLLER_KINDS,
    AdaptiveKLController,
    FixedKLController,
    build_kl_controller,
)


def test_fixed_controller_never_moves() -> None:
    ctl = FixedKLController(0.05)
    assert ctl.update(current_kl=100.0, n_steps=64) == 0.05
    assert ctl.update(current_kl=0.0, n_steps=64) == 0.05
    assert ctl.value == 0.05


def test_adaptive_controller_steps_by_hand() -> None:
    # β0 = 0.1, target 2, horizon 100.
    ctl = AdaptiveKLController(0.1, target=2.0, horizon=100.0)
    # KL 2.2: e = 2.2/2 - 1 = 0.1 (inside ±0.2); β = 0.1·(1 + 0.1·10/100) = 0.1·1.01 = 0.101
    assert ctl.update(2.2, 10) == pytest.approx(0.101, abs=1e-12)
    # KL 8: e = 3 -> clipped to 0.2; β = 0.101·(1 + 0.2·50/100) = 0.101·1.1 = 0.1111
    assert ctl.update(8.0, 50) == pytest.approx(0.1111, abs=1e-12)
    # KL 0: e = -1 -> clipped to -0.2; β = 0.1111·(1 - 0.2·25/100) = 0.1111·0.95 = 0.105545
    assert ctl.update(0.0, 25) == pytest.approx(0.105545, abs=1e-12)
    # KL 1.8: e = 0.9 - 1 = -0.1; β = 0.105545·(1 - 0.1·100/100) = 0.105545·0.9 = 0.0949905
    assert ctl.update(1.8, 100) == pytest.approx(0.0949905, abs=1e-12)
    # KL exactly on target: e = 0, β unchanged.
    assert ctl.update(2.0, 1000) == pytest.approx(0.0949905, abs=1e-12)
    assert ctl.value == pytest.approx(0.0949905, abs=1e-12)


def test_adaptive_controller_state_round_trip() -> None:
    ctl = AdaptiveKLController(0.2, target=1.0, horizon=10.0)
    ctl.update(3.0, 5)  # e = 0.2 (clipped from 2), β = 0.2·(1 + 0.2·5/10) = 0.22
    resumed = AdaptiveKLController(0.5, target=9.0, horizon=99.0)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == pytest.approx(0.22)
    assert (resumed.target, resumed.horizon) == (1.0, 10.0)
    # Both continue identically: e = 0.5/1 - 1 = -0.5 -> -0.2; β = 0.22·(1 - 0.2·5/10) = 0.198
    assert resumed.update(0.5, 5) == ctl.update(0.5, 5) == pytest.approx(0.198)


def test_fixed_controller_state_round_trip_and_kind_check() -> None:
    fixed = FixedKLController(0.3)
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.3
    with pytest.raises(ValueError, match="different KL controller kind"):
        AdaptiveKLController(0.1, 1.0, 1.0).load_state_dict(fixed.state_dict())


def test_build_kl_controller() -> None:
    assert set(KL_CONTROLLER_KINDS) == {"fixed", "adaptive"}
    assert isinstance(build_kl_controller("fixed", 0.1), FixedKLController)
    ctl = build_kl_controller("adaptive", 0.1, target=6.0, horizon=10_000)
    assert isinstance(ctl, AdaptiveKLController)
    assert (ctl.value, ctl.target, ctl.horizon) == (0.1, 6.0, 10_000.0)
    with pytest.raises(ValueError, match="needs a target KL and a horizon"):
        build_kl_controller("adaptive", 0.1)
    with pytest.raises(ValueError, match="unknown KL controller 'pid'"):
        build_kl_controller("pid", 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: FixedKLController(-0.1), "kl_coef must be >= 0"),
        (lambda: AdaptiveKLController(-0.1, 1.0, 1.0), "initial kl_coef"),
        (lambda: AdaptiveKLController(0.1, 0.0, 1.0), "target must be > 0"),
        (lambda: AdaptiveKLController(0.1, 1.0, 0.0), "horizon must be > 0"),
        (lambda: AdaptiveKLController(0.1, 1.0, 1.0).update(1.0, -1), "n_steps"),
    ],
)
def test_bad_values_are_refused(build, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        build()
