from __future__ import annotations

import pytest

from netimpl import features
from netimpl.uring import ring


@pytest.fixture(autouse=True)
def _need_io_uring():
    reason = features.io_uring_reason() or (ring.IMPORT_ERROR and f"io_uring core not built: {ring.IMPORT_ERROR}")
    if reason:
        pytest.skip(reason)
