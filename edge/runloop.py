"""`edge run`: the counting loop over a source, with a live tally."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from edge.bundle import load_bundle
from edge.engine import CellCounter
from edge.frames import FrameError
from edge.session import Session
from edge.sources import open_source

log = logging.getLogger("edge.run")


def run_session(bundle_path: Path, source_spec: str, out_dir: Path | None, backend: str = "onnxruntime",
                threads: int | None = None, max_frames: int | None = None, live=None) -> dict:
    """Count every frame of the source into a session folder; return the results dict."""
    live = live or sys.stdout
    bundle = load_bundle(bundle_path)
    source = open_source(source_spec)
    counter = CellCounter(bundle, backend=backend, threads=threads)
    if out_dir is None:
        out_dir = Path("edge-out") / time.strftime("session-%Y%m%dT%H%M%S")
    session = Session(out_dir, bundle, source.description)
    print(f"session {session.session_id}: {source.description} -> {out_dir}", file=live)
    frames_seen = 0
    try:
        while max_frames is None or frames_seen < max_frames:
            frame_id = frames_seen
            try:
                frame = source.read()
                if frame is None:
                    break
                frame_id = frame.frame_id
                result = counter.count_field(frame.image)
            except (FrameError, FloatingPointError) as exc:
                log.warning("frame %s skipped: %s", frame_id, exc)
                session.skip(frame_id, str(exc))
                frames_seen += 1
                continue
            frames_seen += 1
            session.record(frame, result)
            print(f"frame {frame.frame_id:>5}  cells {len(result):>3}  {session.tally.line()}", file=live)
    finally:
        results = session.close()
        source.close()
        counter.close()
    print(_summary(results), file=live)
    return results


def _summary(results: dict) -> str:
    lines = [f"done: {results['frames']['counted']} fields counted, {results['frames']['skipped']} skipped; "
             f"{results['accepted']} cells counted, {results['rejected']} sent to review"]
    for name, n in results["counts"].items():
        lines.append(f"  {name:<14} {n:>6}  {results['differential_percent'][name]:5.1f} %")
    return "\n".join(lines)
