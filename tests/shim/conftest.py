"""Fixtures for the shim tests: the shim and the fake CUDA driver, each built once per
session, and a builder for the C driver programs (see cbuild.py for the plain functions)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.node_agent.shim import build_shim
from tests.shim import cbuild


def _require_compiler() -> None:
    if cbuild.find_compiler() is None:
        pytest.skip("no C compiler ($CC or cc) on PATH: the shim tests build C code")


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libdilu_shim.so, built from source with warnings as errors, for every shim test."""
    _require_compiler()
    return build_shim(out_dir=tmp_path_factory.mktemp("shim"), strict=True)


@pytest.fixture(scope="session")
def fake_cuda_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the fake driver: libcuda.so.1 and the libcuda.so link to it."""
    _require_compiler()
    return cbuild.build_fake_cuda(tmp_path_factory.mktemp("fake_cuda"))


@pytest.fixture(scope="session")
def build_driver() -> Callable[..., Path]:
    """cbuild.build_driver, skipping the test when there is no C compiler."""
    _require_compiler()
    return cbuild.build_driver
