"""The fault suite: netimpl and its NBD target under faults a storage target meets in the field.

Run with ``python -m pytest tests/faults`` (short profile, what CI runs) or
``NETIMPL_FAULTS=long python -m pytest tests/faults``. Needs root, network
namespaces and pyroute2 (it skips with the reason elsewhere, and fails in
CI, which provides them). A table at the end of the session sums up, per
backend, what was verified and injected.

Where each case lives, and the defect of issue 10 (or issue 15) it holds down:

========================  ==========================================================  ==========
module                    cases                                                       defect
========================  ==========================================================  ==========
test_link                 every byte both ways through loss, duplication, reorder,
                          corruption, delay and a 1.5 s blackout, zero-copy on
test_reset                peer reset with zero-copy requests queued, the socket        1
                          closed / removed in the failure callback; closing with
                          zero-copy sends awaiting release, then the group; a
                          reset while a zero-copy send awaits release keeps
                          completion order (posix, scripted)
test_churn                thousands of connections ended four ways: fds, live
                          sockets and RSS back to baseline
test_flow                 an unread peer under pause_reading; a half-closed peer      issue 15
                          with a reply larger than the send buffer; a paused
                          listener under a connection flood
test_threads              poll / flush / writev_async from a thread that does not     2, 3
                          own the ring; a refused writev_async is never sent
test_optmem               zero-copy sends refused for optmem (ENOBUFS) go by copy
test_nbd                  unread replies (file and memory exports); a departed        4, 5, 6,
                          client's buffers; fuzzed input; stalled handshakes; the     7, 8
                          fd limit; pipelined I/O through the impaired link; the
                          banner's zero-copy line
========================  ==========================================================  ==========
"""
