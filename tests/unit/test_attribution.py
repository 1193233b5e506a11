"""Who made a scaling decision: `source` tokens checked at the edge."""

from __future__ import annotations

import pytest

from services.common.attribution import checked_source
from services.common.errors import InvalidArgument


@pytest.mark.parametrize("source", ["scaler", "cli", "manual", "my-autoscaler", "ci_2", "a" * 32])
def test_short_lowercase_tokens_are_kept(source: str):
    assert checked_source("source", source) == source


def test_no_source_means_manual():
    assert checked_source("source", "") == "manual"


@pytest.mark.parametrize("source", ["Scaler", "2fast", "-x", "a b", "a.b", "a" * 33, "é",
                                    "scaler\n", "x" * 10_000])
def test_anything_else_is_invalid_argument_naming_the_field(source: str):
    with pytest.raises(InvalidArgument) as refused:
        checked_source("source", source)
    assert refused.value.field == "source"
    assert len(refused.value.message) < 200  # a huge value is not echoed back whole
