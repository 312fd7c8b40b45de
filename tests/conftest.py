"""Shared test helpers.

`require_peer(name)` imports an optional peer (torch, onnxruntime, ...): a skip when it is absent, a failure
when the environment sets RNNFAST_REQUIRE_PEERS=1 (CI), so that a peer never goes missing silently. Use it as
`from conftest import require_peer` (pytest puts this folder on sys.path: tests/ has no __init__.py) or via
the `torch` fixture.
"""
import importlib
import os
import zlib

import numpy as np
import pytest


def require_peer(name):
    """Import and return module `name`; pytest.skip if it cannot be imported (pytest.fail under CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        msg = f"peer {name!r} is not importable: {exc}"
        if os.environ.get("RNNFAST_REQUIRE_PEERS") == "1":
            pytest.fail(msg + " (RNNFAST_REQUIRE_PEERS=1)", pytrace=False)
        pytest.skip(msg)


@pytest.fixture
def torch():
    return require_peer("torch")


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's id: reproducible, and different for each parametrization."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def restore_threads():
    """Every test leaves rnnfast's thread count as it found it."""
    import rnnfast
    n = rnnfast.get_num_threads()
    yield
    rnnfast.set_num_threads(n)
