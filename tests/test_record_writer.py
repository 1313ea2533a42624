"""The background writer of the session record: in order, failures raised in the caller's thread
with the frame they stopped at, nothing written after a failure, and queued writes finished at close."""
from __future__ import annotations

import errno
import threading

import pytest

from edge.counting.record_writer import QUEUE_FIELDS, RecordWriter, WriteFailed


def test_writes_run_in_the_order_they_were_submitted_off_the_callers_thread():
    done, threads = [], set()
    writer = RecordWriter()
    for i in range(20):
        writer.submit(i, lambda i=i: (done.append(i), threads.add(threading.get_ident())))
    writer.drain()
    assert done == list(range(20)) and threading.get_ident() not in threads
    writer.close()


def test_a_failure_is_raised_with_its_frame_and_stops_later_writes():
    done = []
    writer = RecordWriter()
    gate = threading.Event()
    writer.submit(0, gate.wait)

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.submit(1, full_disk)
    writer.submit(2, lambda: done.append(2))
    gate.set()
    with pytest.raises(WriteFailed) as failed:
        writer.drain()
    assert failed.value.frame_id == 1 and isinstance(failed.value.cause, OSError)
    assert done == []  # the field after the failure was not committed: a resume counts it again
    with pytest.raises(WriteFailed):
        writer.submit(3, lambda: done.append(3))
    writer.close()


def test_the_queue_is_bounded_and_close_finishes_what_was_queued():
    gate, done = threading.Event(), []
    writer = RecordWriter()
    writer.submit(0, gate.wait)
    for i in range(1, QUEUE_FIELDS + 1):
        writer.submit(i, lambda i=i: done.append(i))
    blocked = threading.Thread(target=writer.submit, args=(99, lambda: done.append(99)))
    blocked.start()
    blocked.join(timeout=0.2)
    assert blocked.is_alive()  # the loop waits rather than holding more fields in memory
    gate.set()
    blocked.join(timeout=5)
    writer.close()
    assert done == list(range(1, QUEUE_FIELDS + 1)) + [99]


def test_a_session_whose_writer_hit_a_bug_does_not_close_quietly(tmp_path, monkeypatch):
    import time

    import numpy as np

    from edge.counting.session import Session
    from edge.runtime.bundle import load_bundle
    from edge.runtime.engine import CellCounter
    from edge.runtime.frames import Frame
    from edge.synthetic.smear import SmearConfig, render_field
    from tests.helpers import SYNTHETIC_BUNDLE

    bundle = load_bundle(SYNTHETIC_BUNDLE)
    image = render_field(SmearConfig(), seed=1).image
    with CellCounter(bundle, threads=1) as counter:
        result = counter.count_field(image)
    session = Session(tmp_path / "s", bundle, "test")
    monkeypatch.setattr(session, "_append_cells_csv", lambda rows, origin: np.zeros(2)[5])  # an IndexError
    session.record(Frame(0, image, time.time(), "f0"), result)
    with pytest.raises(IndexError):
        session.close()
