"""The backend registry: priorities, lazy probes, the default, options."""

from __future__ import annotations

import pytest

import netimpl
from netimpl import registry
from tests.fakeimpl import FakeImpl


class ProbedImpl(FakeImpl):
    probes = 0

    def __init__(self, name: str, reason: str = "") -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]
        self._reason = reason

    def probe(self) -> str:
        type(self).probes += 1
        return self._reason


@pytest.fixture
def scratch_registry(monkeypatch):
    """An empty registry for the test, the real one restored afterwards."""
    monkeypatch.setattr(registry, "_entries", {})
    monkeypatch.setattr(registry, "_default", None)
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def test_builtin_posix_is_registered_and_available():
    names = {i.name: i for i in netimpl.impls()}
    assert names["posix"].available and names["posix"].reason == ""
    prios = [i.priority for i in netimpl.impls()]
    assert prios == sorted(prios, reverse=True)


def test_highest_available_priority_is_the_default_and_probes_are_lazy(scratch_registry):
    ProbedImpl.probes = 0
    netimpl.register(ProbedImpl("low"), 1)
    netimpl.register(ProbedImpl("high", reason="needs a newer kernel"), 9)
    netimpl.register(ProbedImpl("mid"), 5)
    assert ProbedImpl.probes == 0  # nothing probed at registration
    assert netimpl.default_impl() == "mid"
    infos = netimpl.impls()
    assert [(i.name, i.available, i.reason) for i in infos] == [
        ("high", False, "needs a newer kernel"), ("mid", True, ""), ("low", True, "")]
    assert ProbedImpl.probes == 3  # each probed once, results kept


def test_set_default_impl(scratch_registry):
    netimpl.register(ProbedImpl("a"), 1)
    netimpl.register(ProbedImpl("b", reason="io_uring is disabled"), 2)
    with pytest.raises(ValueError, match="'nope'"):
        netimpl.set_default_impl("nope")
    with pytest.raises(netimpl.NetImplError, match="io_uring is disabled"):
        netimpl.set_default_impl("b")
    netimpl.set_default_impl("a")
    assert netimpl.default_impl() == "a"


def test_env_var_wins(scratch_registry, monkeypatch):
    netimpl.register(ProbedImpl("a"), 1)
    netimpl.register(ProbedImpl("c"), 3)
    netimpl.set_default_impl("c")
    monkeypatch.setenv("NETIMPL_IMPL", "a")
    assert netimpl.default_impl() == "a"
    monkeypatch.setenv("NETIMPL_IMPL", "zzz")
    with pytest.raises(ValueError, match="zzz"):
        netimpl.default_impl()


def test_env_var_naming_the_real_posix_backend(monkeypatch):
    monkeypatch.setenv("NETIMPL_IMPL", "posix")
    assert netimpl.default_impl() == "posix"
    with netimpl.listen("127.0.0.1", 0) as s:
        assert s.impl_name == "posix"


def test_register_rejects_duplicates_and_bad_arguments(scratch_registry):
    netimpl.register(ProbedImpl("x"), 1)
    with pytest.raises(ValueError, match="'x'"):
        netimpl.register(ProbedImpl("x"), 2)
    with pytest.raises(TypeError):
        netimpl.register(object(), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'high'"):
        netimpl.register(ProbedImpl("y"), "high")  # type: ignore[arg-type]


def test_unavailable_backend_is_never_chosen_implicitly_and_refuses_explicitly(scratch_registry):
    netimpl.register(ProbedImpl("only", reason="ENOSYS"), 1)
    with pytest.raises(netimpl.NetImplError, match="ENOSYS"):
        netimpl.default_impl()
    with pytest.raises(netimpl.NetImplError, match="ENOSYS"):
        netimpl.listen("127.0.0.1", 0, impl="only")


def test_a_probe_that_raises_is_reported_not_propagated(scratch_registry):
    class Broken(ProbedImpl):
        def probe(self) -> str:
            raise RuntimeError("kaboom")

    netimpl.register(Broken("broken"), 1)
    (info,) = netimpl.impls()
    assert not info.available and "kaboom" in info.reason


def test_impl_opts_are_copies_and_changes_are_checked():
    opts = netimpl.get_impl_opts("posix")
    opts.recv_buf_size = 1
    assert netimpl.get_impl_opts("posix").recv_buf_size == 2 << 20
    with pytest.raises(TypeError, match="no_such_field"):
        netimpl.set_impl_opts("posix", no_such_field=1)
    with pytest.raises(ValueError, match="enable_placement_id=7"):
        netimpl.set_impl_opts("posix", enable_placement_id=7)
    with pytest.raises(TypeError, match="enable_recv_pipe"):
        netimpl.set_impl_opts("posix", enable_recv_pipe="yes")
    bad = netimpl.ImplOpts()
    bad.zerocopy_threshold = -5
    with pytest.raises(ValueError, match="zerocopy_threshold=-5"):
        netimpl.set_impl_opts("posix", bad)
    with pytest.raises(ValueError, match="'nope'"):
        netimpl.get_impl_opts("nope")
    assert netimpl.get_impl_opts("posix") == netimpl.ImplOpts()  # nothing changed by the failures


def test_impl_opts_apply_to_sockets_created_afterwards():
    old = netimpl.get_impl_opts("posix")
    with netimpl.listen("127.0.0.1", 0, impl="posix") as before:
        netimpl.set_impl_opts("posix", enable_recv_pipe=False)
        try:
            with netimpl.listen("127.0.0.1", 0, impl="posix") as lsock, \
                    netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="posix") as after:
                assert after._pipe is None
            with netimpl.connect("127.0.0.1", before.getaddr()[1], impl="posix"):
                s = None
                while s is None:
                    s = before.accept()
                with s:
                    assert s._pipe is not None  # accepted sockets take their listener's options
        finally:
            netimpl.set_impl_opts("posix", old)


def test_sock_opts_defaults_and_checks():
    o = netimpl.SockOpts()
    assert (o.priority, o.zcopy, o.reuseport, o.ack_timeout) == (0, True, False, 0)
    with pytest.raises(ValueError, match="priority=-1"):
        netimpl.SockOpts(priority=-1)
    with pytest.raises(TypeError, match="zcopy"):
        netimpl.SockOpts(zcopy=None)  # type: ignore[arg-type]
    d = netimpl.ImplOpts()
    assert (d.recv_buf_size, d.send_buf_size, d.enable_recv_pipe, d.enable_zerocopy_send_server,
            d.enable_zerocopy_send_client, d.zerocopy_threshold, d.enable_quickack, d.enable_placement_id) == \
        (2 << 20, 2 << 20, True, True, False, 0, False, 0)
