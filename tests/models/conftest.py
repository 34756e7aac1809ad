"""Fixtures of the model tests."""

import pytest


@pytest.fixture(params=["softpick", "softmax"])
def attn_type(request) -> str:
    return request.param
