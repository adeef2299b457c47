from __future__ import annotations

import pytest

import netimpl
from netimpl import features
from netimpl.uring import ring
from tests.conftest import need


@pytest.fixture(autouse=True)
def _need_io_uring():
    need(features.io_uring_reason() or (ring.IMPORT_ERROR and f"io_uring core not built: {ring.IMPORT_ERROR}"))


@pytest.fixture
def small_buffers():
    """Groups made in the test get a provided-buffer ring of few, small buffers."""
    def set_(entries: int, size: int) -> None:
        netimpl.set_impl_opts("uring", pbuf_entries=entries, pbuf_size=size)

    old = netimpl.get_impl_opts("uring")
    yield set_
    netimpl.set_impl_opts("uring", old)
