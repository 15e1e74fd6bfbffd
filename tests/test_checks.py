"""d2_anchorfree/checks.py: the number predicates every config and data check uses."""
import math

import numpy as np
import pytest

from d2_anchorfree.checks import is_number, is_whole_number


@pytest.mark.parametrize("value, number, whole", [
    (3, True, True), (0, True, True), (-2, True, True), (2.5, True, False), (2.0, True, False),
    (True, False, False), (False, False, False), (math.nan, False, False), (math.inf, False, False),
    (-math.inf, False, False), ("3", False, False), (None, False, False), ([1], False, False),
    (np.float32(1.0), False, False),
])
def test_number_predicates(value, number, whole):
    assert is_number(value) is number
    assert is_whole_number(value) is whole


def test_the_checks_that_use_them_refuse_a_bool_and_a_float_count():
    from d2_anchorfree.data.mosaic import check_mosaic_args

    check_mosaic_args(0.5, 416, "crop", 0.2)
    with pytest.raises(ValueError, match="INPUT.MOSAIC.SIZE = True"):
        check_mosaic_args(0.5, True, "crop", 0.2)
    with pytest.raises(ValueError, match="INPUT.MOSAIC.SIZE = 416.0"):
        check_mosaic_args(0.5, 416.0, "crop", 0.2)
    with pytest.raises(ValueError, match="INPUT.MOSAIC.PROB = nan"):
        check_mosaic_args(math.nan, 416, "crop", 0.2)
