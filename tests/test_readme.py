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
