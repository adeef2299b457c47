from __future__ import annotations

import pytest

from netimpl import features
from netimpl.uring import ring
from tests.conftest import need


@pytest.fixture(autouse=True)
def _need_io_uring():
    need(features.io_uring_reason() or (ring.IMPORT_ERROR and f"io_uring core not built: {ring.IMPORT_ERROR}"))
