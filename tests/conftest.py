"""Shared fixtures: every available device, both float dtypes, seeded generators."""

from __future__ import annotations

import pytest
import torch


def device_params(cuda_available: bool) -> list:
    """The ``device`` fixture's parameters: the CPU always, CUDA when there is a device.

    The CUDA variant carries the ``gpu`` marker, so ``pytest -m gpu`` (the GPU check) selects the CUDA variant of
    every test that takes ``device`` as well as the tests marked ``gpu`` themselves. Without CUDA there is no CUDA
    variant at all: the CPU suite collects and runs exactly what it did before.
    """
    params = [pytest.param("cpu", id="cpu")]
    if cuda_available:
        params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.gpu))
    return params


DEVICES = device_params(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each available device in turn (``cpu``, and ``cuda`` marked ``gpu`` where a CUDA device exists)."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def tol_for(dtype: torch.dtype) -> float:
    """Absolute tolerance for O(1) values computed through a few transforms."""
    return 1e-4 if dtype == torch.float32 else 1e-10


@pytest.fixture
def single_thread():
    """Run a test with one torch thread: for many tiny tensor operations extra threads only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
