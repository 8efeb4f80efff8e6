"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from sharpclip.models import load_model


@pytest.fixture(scope="session")
def model():
    """The bundled model, loaded once."""
    return load_model("bundled")
