"""The shared input checks: one pass over the values finds NaN, Inf and values outside [0, 1]."""

from __future__ import annotations

import re

import pytest
import torch

from fusion.ops.checks import check_image, check_mask


def _mask(dtype=torch.float32) -> torch.Tensor:
    mask = torch.zeros(2, 1, 6, 7, dtype=dtype)
    mask[:, :, 2:4, 2:5] = 1
    return mask


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused_by_name(dtype: torch.dtype, bad: float) -> None:
    image = torch.rand(2, 3, 5, 4).to(dtype)
    assert check_image(image, "fg") is image
    image[1, 2, 4, 3] = bad  # the last value of the last sample
    with pytest.raises(ValueError, match="fg contains NaN or Inf values"):
        check_image(image, "fg")
    mask = _mask(dtype)
    mask[1, 0, 5, 6] = bad
    with pytest.raises(ValueError, match="mask contains NaN or Inf values"):
        check_mask(mask)


@pytest.mark.parametrize(("value", "shown"), [(1.5, "[0, 1.5]"), (-0.25, "[-0.25, 1]")])
def test_mask_values_outside_the_unit_interval_are_refused_with_the_range(value: float, shown: str) -> None:
    mask = _mask()
    assert check_mask(mask) is mask
    mask[1, 0, 0, 0] = value
    expected = "mask values must lie in [0, 1], got range " + shown
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_mask(mask)


def test_mask_shape_and_type_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="must have 1 channel"):
        check_mask(torch.zeros(1, 3, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        check_mask(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        check_mask(torch.zeros(4, 4))
    empty = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="empty"):
        check_mask(empty)
