"""The README's embedding example runs and serves a real client."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_embedding_example_serves_a_client():
    block = re.search(r"## Embedding\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'netimpl.listen("0.0.0.0", 4420)' in block and "while True:" in block
    code = block.replace('netimpl.listen("0.0.0.0", 4420)', 'netimpl.listen("127.0.0.1", 0)')
    code = code.replace("while True:", "while not stop.is_set():")
    # Tear down in the serving thread: a uring group's ring belongs to the thread that polls it.
    code += "for s in list(group.socks):\n    group.remove_sock(s)\n    s.close()\ngroup.close()\n"
    ns: dict = {"stop": threading.Event()}
    server = threading.Thread(target=exec, args=(code, ns), daemon=True)
    server.start()
    try:
        for _ in range(500):
            group = ns.get("group")
            if group is not None and group.socks:
                break
            threading.Event().wait(0.01)
        port = group.socks[0].getaddr()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"hello")
            reply = b""
            while len(reply) < 9:
                reply += c.recv(64)
        assert reply == b"ack:hello"
    finally:
        ns["stop"].set()
        server.join(5)
    assert not server.is_alive() and ns["group"].socks == []


LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def test_links_stay_in_the_tree_and_name_the_file_they_open():
    """The README is also the package description, where relative links cannot resolve: each link is a
    file of the source tree (shipped in the sdist) and its text names that file."""
    root = README.parent
    links = LINK.findall(README.read_text())
    assert links
    for image, text, target in links:
        assert "://" not in target and not target.startswith(("/", "..")), target
        assert (root / target).resolve().is_relative_to(root) and (root / target).is_file(), target
        shown = text.strip("`")
        if image:
            assert target in shown, (text, target)
        else:
            assert target.startswith(shown) or target in shown, (text, target)


def test_the_reference_is_in_the_tree():
    text = README.read_text()
    assert "[docs/api.md](docs/api.md)" in text and "../" not in text


def test_the_nbd_section_says_what_the_default_address_exposes():
    section = README.read_text().split("## A storage target on it", 1)[1].split("\n## ", 1)[0]
    command = next(line for line in section.splitlines() if line.startswith("python -m netimpl.nbd "))
    assert "--host 127.0.0.1" in command
    assert "all interfaces" in section and "no authentication" in section


def test_the_readme_says_what_happens_without_a_c_compiler():
    text = README.read_text()
    assert "C compiler" in text and "python3-dev" in text and "install still" in text
