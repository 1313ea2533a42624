"""Reliability: faults survived with nothing lost and nothing counted twice.

The camera disappears and returns; the disk fills up (simulated at the session's write points,
at SQLite's own size limit, and, where this process may mount one, on a real tiny tmpfs); the
serial device unplugs mid-session; `edge run` is SIGKILLed at random moments and resumed; two
`edge run` processes meet on one folder; one review archive is imported by two processes at once.
A resumed or recovered session must hold exactly what an uninterrupted run of the same fields
holds: the same cells, the same differential, every rejected cell queued once, both databases
intact. benchmarks/reliability_runner.py runs the kill/resume cycles many more times.
"""
import csv
import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge.counting.runloop import run_session
from edge.counting.session import Session, SessionError
from edge.counting.sources import CameraSource, ReconnectPolicy, capture_spec
from edge.synthetic.smear import render_field
from tests.helpers import EDGE, SYNTHETIC_BUNDLE, assert_same_as_uninterrupted, kill_and_resume, session_state

# Varied imaging conditions, so that some cells go to the review queue.
SOURCE = "synthetic:frames=8,seed=2026,vary=1"


def quiet_run(out, source=SOURCE, **kwargs):
    with open(os.devnull, "w") as sink:
        return run_session(SYNTHETIC_BUNDLE, source, out, threads=1, live=sink, save_fields=False, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of SOURCE."""
    out = tmp_path_factory.mktemp("reference") / "s"
    quiet_run(out)
    state = session_state(out)
    assert state["rejected"] > 0 and state["frames"]["counted"] == 8
    return state


# ---------------------------------------------------------------- the camera

class FlakyCamera:
    """The device behind an injectable capture factory: delivers `before` frames, is unplugged,
    refuses `failed_reopens` reopens, then delivers again. Frames come at about 30 fps."""

    def __init__(self, before: int, failed_reopens: int):
        self.before, self.failed_reopens = before, failed_reopens
        self.opens = self.reads = 0
        self.image = render_field(seed=4).image

    def open(self, spec):
        self.opens += 1
        return _Capture(self, opened=self.opens == 1 or self.opens - 1 > self.failed_reopens)


class _Capture:
    def __init__(self, camera: FlakyCamera, opened: bool):
        self.camera, self.opened = camera, opened

    def isOpened(self):
        return self.opened

    def read(self):
        camera = self.camera
        camera.reads += 1
        time.sleep(0.03)
        if camera.reads == camera.before + 1:
            return False, None
        return True, camera.image

    def release(self):
        self.opened = False


def test_the_camera_disappears_and_returns_and_the_session_goes_on(tmp_path, caplog):
    camera = FlakyCamera(before=3, failed_reopens=2)
    source = CameraSource(capture_spec("/dev/video0"), ReconnectPolicy(0.05, 0.2, 10.0), camera.open)
    with caplog.at_level("WARNING", logger="edge.counting.sources"):
        results = quiet_run(tmp_path / "s", source=source, max_frames=6, field_trigger="every")
    loop = results["loop"]
    assert results["finished"] and results["frames"]["counted"] == 6
    assert loop["source"]["reconnects"] == 1 and loop["source"]["gap_seconds"] >= 0.05 + 0.1
    assert camera.opens == 4  # the first open, two refused reopens, the one that worked
    # a live camera may drop fields the loop cannot keep up with, and counts each drop
    assert loop["fields_taken"] == 6 + loop["dropped"] + loop["not_counted_after_stop"]
    assert "no frame; reopening with backoff" in caplog.text and "back after" in caplog.text
    with open(tmp_path / "s" / "cells.csv") as fh:
        per_field = {}
        for row in csv.DictReader(fh):
            per_field[row["frame_id"]] = per_field.get(row["frame_id"], 0) + 1
    assert len(set(per_field.values())) == 1, "the same picture gives the same cells, outage or not"


# ---------------------------------------------------------------- a full disk

class FullDisk:
    """Makes the session folder's disk full once `after` fields are recorded: every fsync of a
    file under it fails with ENOSPC (files), or SQLite's page limit stops the databases from
    growing ("database"). Session.record is wrapped only to know when to fill the disk."""

    def __init__(self, monkeypatch, out: Path, after: int, how: str):
        self.out, self.after, self.how, self.recorded, self.full = out.resolve(), after, how, 0, False
        self.real_fsync = os.fsync
        record = Session.record

        def counting_record(session, *args, **kwargs):
            if self.recorded == self.after:
                self.fill(session)
            record(session, *args, **kwargs)
            self.recorded += 1

        monkeypatch.setattr(Session, "record", counting_record)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def fill(self, session: Session) -> None:
        self.full = True
        if self.how == "database":
            for db in (session._db, session.review._db):
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {pages}")

    def fsync(self, fd: int) -> None:
        if self.full and self.how == "files" and Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(self.out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real_fsync(fd)


@pytest.mark.parametrize("how", ["files", "database"])
def test_a_full_disk_stops_the_session_clearly_keeps_what_was_counted_and_resumes(
        tmp_path, monkeypatch, reference, how):
    out = tmp_path / "s"
    FullDisk(monkeypatch, out, after=3, how=how)
    with pytest.raises(SessionError, match=r"cannot record frame \d+ .*; the \d+ fields committed so far are "
                                           r"kept: free space, then continue with `edge run --resume") as error:
        quiet_run(out)
    committed = int(str(error.value).split("; the ")[1].split()[0])
    state = session_state(out)
    assert state["session.sqlite"] == state["review/queue.sqlite"] == "ok"
    assert 3 <= committed < 8 and not state["finished"]
    assert state["db_cells"] == [c for c in reference["db_cells"] if c[0] < committed]
    monkeypatch.undo()  # space freed
    quiet_run(out, source=None, resume=True)
    assert_same_as_uninterrupted(out, reference)


def _mount_tmpfs(path: Path, size: str, remount: bool = False) -> bool:
    options = f"remount,size={size}" if remount else f"size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 384 KiB filesystem: tmpfs, where this process may mount one (root); else skipped."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not _mount_tmpfs(mount, "384k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated full disk above still runs")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_filesystem_is_one_clear_error_and_the_session_resumes(small_filesystem, reference):
    out = small_filesystem / "s"
    args = ["run", "--bundle", str(SYNTHETIC_BUNDLE), "--source", SOURCE, "--out", str(out), "--no-save-fields",
            "--threads", "1"]
    first = subprocess.run(EDGE + args, capture_output=True, text=True, timeout=300)
    errors = [line for line in first.stderr.splitlines() if line.startswith("edge: error")]
    assert first.returncode == 2 and "Traceback" not in first.stderr
    assert len(errors) == 1 and "--resume" in errors[0] and ("disk is full" in errors[0]
                                                             or "No space left" in errors[0])
    counted = session_state(out)["frames"]["counted"]
    assert 0 < counted < 8
    assert _mount_tmpfs(small_filesystem, "16m", remount=True)
    resumed = subprocess.run(EDGE + ["run", "--resume", "--out", str(out), "--no-save-fields", "--threads", "1"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as_uninterrupted(out, reference)


# ---------------------------------------------------------------- the serial device unplugs

def test_the_serial_device_unplugs_mid_session_and_no_field_is_lost_or_doubled(tmp_path, monkeypatch):
    import firmware_bridge.simulator as simulator_module

    class UnpluggedOnce(simulator_module.FirmwareSimulator):
        """`--serial sim` with a cable pulled at field 2 and pushed back 0.4 s later. The link
        finds the device again through a stable path (like /dev/serial/by-id/...)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs, link_path=str(tmp_path / "scope"))

        def _field_ready(self):
            message = super()._field_ready()
            if message.field_id == 2 and not getattr(self, "pulled", False):
                self.pulled = True
                threading.Thread(target=self._pull_and_replug, daemon=True).start()
            return message

        def _pull_and_replug(self):
            self.unplug()
            time.sleep(0.4)
            self.replug()

    source = "synthetic:frames=10,seed=8"
    clean = quiet_run(tmp_path / "clean", source=source, serial="sim", sim_fields=5)
    monkeypatch.setattr(simulator_module, "FirmwareSimulator", UnpluggedOnce)
    pulled = quiet_run(tmp_path / "pulled", source=source, serial="sim", sim_fields=5)
    link = pulled["loop"]["source"]
    assert link["link_gaps"] == 1 and link["reconnects"] == 1 and link["gap_seconds"] >= 0.3
    assert pulled["stop_reason"] == clean["stop_reason"] == "scan complete (5 fields)"
    assert pulled["frames"] == clean["frames"] and pulled["frames"]["counted"] == 5
    assert pulled["counts"] == clean["counts"] and pulled["rejected"] == clean["rejected"]


# ---------------------------------------------------------------- SIGKILL and resume


def test_sigkill_at_random_moments_then_resume_counts_what_an_uninterrupted_run_counts(tmp_path, reference):
    rng = random.Random(11)
    out = tmp_path / "killed"
    done = kill_and_resume(out, SOURCE, kills=3, rng=rng, max_delay_s=6.0)
    assert done["kills"] + done["finished_before_kill"] >= 1
    assert_same_as_uninterrupted(out, reference)


# ---------------------------------------------------------------- two processes, one folder

def test_a_second_edge_run_on_a_folder_being_counted_is_refused(tmp_path):
    out = tmp_path / "s"
    first = subprocess.Popen(EDGE + ["run", "--bundle", str(SYNTHETIC_BUNDLE), "--source", "synthetic:frames=200,seed=1",
                                     "--out", str(out), "--no-save-fields", "--threads", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "results.json").exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read().decode()
            time.sleep(0.05)
        second = subprocess.run(EDGE + ["run", "--resume", "--out", str(out), "--threads", "1"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip() == f"edge: error: {out} is being counted by another edge process"
        assert first.poll() is None, "the first goes on"
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] and results["stop_reason"] == "stopped by SIGTERM"


# ---------------------------------------------------------------- the review archive, twice at once

def test_one_labels_file_imported_twice_at_once_is_applied_once(tmp_path, monkeypatch):
    """test_review_import.py imports the same labels twice in a row; here two imports overlap:
    each reads the current labels and then waits, so both have read before either writes."""
    import edge.review.label_import as label_import
    from edge.review.label_import import import_labels
    from tests.helpers import archive_manifest, export, labels_for, make_session
    session = make_session(tmp_path, frames=2)
    archive = export([session], tmp_path / "review.zip")
    manifest = archive_manifest(archive)[0]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(labels_for(archive, {c["cell_id"]: manifest["class_names"][0]
                                                      for c in manifest["cells"]})))
    read_labels = label_import.current_labels

    def slow_read(db):
        found = read_labels(db)
        time.sleep(0.5)
        return found

    monkeypatch.setattr(label_import, "current_labels", slow_read)
    reports = []
    imports = [threading.Thread(target=lambda: reports.append(import_labels([session], labels)))
               for _ in range(2)]
    for t in imports:
        t.start()
    for t in imports:
        t.join()
    assert sorted(r["changed"] for r in reports) == [0, len(manifest["cells"])]
    db = sqlite3.connect(session / "review" / "queue.sqlite")
    audit = db.execute("SELECT cell_id, before, after FROM label_audit").fetchall()
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(audit) == len(manifest["cells"]) and all(before is None for _, before, _ in audit)
    assert db.execute("SELECT COUNT(*) FROM label_imports").fetchone()[0] == 1
