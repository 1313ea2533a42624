"""The long versions of the reliability suite, and the figures of docs/reliability.md.

    python benchmarks/reliability_runner.py [--minutes 30] [--kills 100] [--fuzz-minutes 15]
                                            [--out runs/reliability] [--doc docs/reliability.md]

1. Kill and resume: `edge run` on --kill-fields synthetic fields is SIGKILLed at random
   moments (uniform over 1.2 times the length of an uninterrupted run, start-up included) and
   resumed, a few kills per session, until --kills kills have landed; every session must end with exactly the cells,
   differential and review queue of an uninterrupted run (tests/test_reliability_faults.py).
2. Fuzzing: the bundle manifest loader, the review-label importer and the serial decoder, for
   --fuzz-minutes in all, under atheris (benchmarks/fuzz/harness.py) or, where atheris is not
   installed, under hypothesis (tests/test_reliability_fuzz.py with many examples).
3. Soak: `edge run` on endless synthetic fields for --minutes, sampling the process's resident
   memory, open files and threads from /proc every --sample-s seconds, and the time between
   fields from its output. Growth is the median of the last quarter of the samples after
   warm-up over the median of the first quarter; the target is at most 5 %, and no stall.

The figures go to <out>/figures.json and between the figures markers of --doc; a section not
run this time (--kills 0, --fuzz-minutes 0, --minutes 0) keeps its last figures.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import SYNTHETIC_BUNDLE  # noqa: E402
from tests.helpers import (  # noqa: E402
    EDGE, assert_same_as_uninterrupted, kill_and_resume, session_state)

MARK_START, MARK_END = "<!-- reliability-figures:start -->", "<!-- reliability-figures:end -->"
FUZZ_TARGETS = {"manifest": "manifest", "labels": "labels or archive", "serial": "serial"}
GROWTH_LIMIT = 0.05


# ---------------------------------------------------------------- kill and resume

def kill_resume(out: Path, kills: int, per_session: int, fields: int, seed: int) -> dict:
    source = f"synthetic:frames={fields},seed={seed},vary=1"  # varied imaging: some cells go to review
    reference_dir = out / "reference"
    start = time.perf_counter()
    done = subprocess.run(EDGE + ["run", "--bundle", str(SYNTHETIC_BUNDLE), "--source", source,
                                  "--out", str(reference_dir), "--no-save-fields", "--threads", "1"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the reference run failed: {done.stderr}")
    run_s = time.perf_counter() - start
    reference = session_state(reference_dir)
    rng = random.Random(seed)
    totals = {"kills": 0, "resumes": 0, "fresh_starts": 0, "finished_before_kill": 0, "sessions": 0,
              "identical": 0, "mismatches": []}
    while totals["kills"] < kills:
        session = out / f"killed-{totals['sessions']:03d}"
        happened = kill_and_resume(session, source, min(per_session, kills - totals["kills"]), rng, 1.2 * run_s)
        for key in ("kills", "resumes", "fresh_starts", "finished_before_kill"):
            totals[key] += happened[key]
        totals["sessions"] += 1
        try:
            assert_same_as_uninterrupted(session, reference)
            totals["identical"] += 1
        except AssertionError as exc:
            totals["mismatches"].append(f"{session.name}: {exc}")
        print(f"kill/resume: {totals['kills']}/{kills} kills, {totals['identical']}/{totals['sessions']} sessions "
              "identical", flush=True)
    totals["uninterrupted_run_s"] = round(run_s, 1)
    totals["fields_per_session"] = reference["frames"]["counted"]
    return totals


# ---------------------------------------------------------------- fuzzing

def fuzz(out: Path, minutes: float) -> dict:
    engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    seconds = max(10, int(minutes * 60 / len(FUZZ_TARGETS)))
    results = {"engine": engine, "seconds_per_target": seconds, "targets": {}}
    for target in FUZZ_TARGETS:
        run = _atheris if engine == "atheris" else _hypothesis
        results["targets"][target] = run(target, seconds, out)
        print(f"fuzz {target}: {results['targets'][target]}", flush=True)
    return results


def _atheris(target: str, seconds: int, out: Path) -> dict:
    artifacts = out / "fuzz-findings"
    artifacts.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz" / "harness.py"), target,
                           f"-max_total_time={seconds}", "-print_final_stats=1", "-rss_limit_mb=4096",
                           f"-artifact_prefix={artifacts}/{target}-"], capture_output=True, text=True,
                          cwd=ROOT, timeout=seconds + 600)
    log = proc.stdout + proc.stderr
    (out / f"fuzz-{target}.log").write_text(log)
    executions = next((int(line.split(":")[-1]) for line in log.splitlines()
                       if line.startswith("stat::number_of_executed_units")), None)
    finding = None
    if proc.returncode != 0:
        lines = log.splitlines()
        start = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line), None)
        finding = lines[start + 1] if start is not None and start + 1 < len(lines) else f"exit {proc.returncode}"
    return {"executions": executions, "findings": [finding] if finding else []}


HYPOTHESIS_TESTS = {"manifest": "manifest", "labels": "labels or archive", "serial": None}
HYPOTHESIS_EXAMPLES = 500


def _hypothesis(target: str, seconds: int, out: Path) -> dict:
    """Rounds of the CI property tests with many examples and a new seed each, until time is up."""
    if HYPOTHESIS_TESTS[target] is None:
        select = ["tests/test_firmware_codec.py", "-k", "decoder or damaged"]
    else:
        select = ["tests/test_reliability_fuzz.py", "-k", HYPOTHESIS_TESTS[target]]
    env = dict(os.environ, RELIABILITY_FUZZ_EXAMPLES=str(HYPOTHESIS_EXAMPLES))
    deadline, rounds, findings, tests = time.monotonic() + seconds, 0, [], 0
    while time.monotonic() < deadline:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--hypothesis-seed={rounds}", *select], capture_output=True, text=True,
                              cwd=ROOT, env=env)
        rounds += 1
        tests = _passed(proc.stdout)
        if proc.returncode != 0:
            findings.append(next((line for line in proc.stdout.splitlines() if line.startswith("FAILED")),
                                 f"round {rounds}: exit {proc.returncode}"))
    return {"executions": rounds * tests * HYPOTHESIS_EXAMPLES, "findings": findings,
            "note": "hypothesis upper bound: rounds x tests x examples"}


def _passed(summary: str) -> int:
    for line in summary.splitlines()[::-1]:
        words = line.replace(",", " ").split()
        if "passed" in words:
            return int(words[words.index("passed") - 1])
    return 0


# ---------------------------------------------------------------- soak

def _proc_sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
            "open_files": len(os.listdir(f"/proc/{pid}/fd"))}


def soak(out: Path, minutes: float, sample_s: float, warmup_s: float) -> dict:
    session = out / "soak"
    errors = open(out / "soak-stderr.log", "w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen([sys.executable, "-u", *EDGE[1:], "run", "--bundle", str(SYNTHETIC_BUNDLE),
                             "--source", "synthetic:frames=10000000,seed=7,vary=1", "--out", str(session), "--threads", "2"],
                            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT)
    field_times: list[float] = []

    def read_fields():
        for line in proc.stdout:
            if line.startswith("frame "):
                field_times.append(time.monotonic())

    reader = threading.Thread(target=read_fields, daemon=True)
    reader.start()
    started, samples = time.monotonic(), []
    while time.monotonic() - started < minutes * 60 and proc.poll() is None:
        samples.append({"t": round(time.monotonic() - started, 1), **_proc_sample(proc.pid)})
        time.sleep(sample_s)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=300)
    reader.join(timeout=10)
    errors.close()
    if not alive or code != 0:
        raise SystemExit(f"the soak run ended by itself (exit {code}): see {errors.name}")
    results = json.loads((session / "results.json").read_text())
    after = [s for s in samples if s["t"] >= warmup_s]
    quarter = max(1, len(after) // 4)
    growth = {key: statistics.median(s[key] for s in after[-quarter:]) / statistics.median(s[key] for s in after[:quarter]) - 1
              for key in ("rss_mib", "open_files", "threads")}
    gaps = [b - a for a, b in zip(field_times, field_times[1:]) if a - started >= warmup_s]
    return {
        "minutes": round((time.monotonic() - started) / 60, 1), "warmup_s": warmup_s, "samples": len(samples),
        "fields": results["frames"]["counted"], "cells": results["accepted"] + results["rejected"],
        "fields_per_s": results["loop"]["fields_per_s"], "latency_ms": results["loop"]["latency_ms"],
        "rss_mib": {"first": samples[0]["rss_mib"], "after_warmup": after[0]["rss_mib"],
                    "max": max(s["rss_mib"] for s in after), "last": after[-1]["rss_mib"]},
        "open_files": {"min": min(s["open_files"] for s in after), "max": max(s["open_files"] for s in after)},
        "threads": {"min": min(s["threads"] for s in after), "max": max(s["threads"] for s in after)},
        "growth_percent": {k: round(100 * v, 2) for k, v in growth.items()},
        "field_gap_s": {"median": round(statistics.median(gaps), 3), "max": round(max(gaps), 3)} if gaps else None,
        "within_target": all(v <= GROWTH_LIMIT for v in growth.values()),
        "stop_reason": results["stop_reason"], "finished": results["finished"],
    }


# ---------------------------------------------------------------- report

def markdown(figures: dict) -> str:
    k, f, s = figures.get("kill_resume"), figures.get("fuzz"), figures.get("soak")
    lines = []
    if k:
        lines += [f"- **Kill and resume** ({_when(k)}): {k['kills']} SIGKILLs at random moments over {k['sessions']} sessions of "
                  f"{k['fields_per_session']} fields ({k['resumes']} resumes, {k['fresh_starts'] - k['sessions']} fresh "
                  f"restarts after a kill before the session existed, {k['finished_before_kill']} runs that "
                  f"finished before their kill): "
                  f"**{k['identical']} of {k['sessions']}** sessions identical to the uninterrupted run "
                  f"(cells, differential, review queue, database integrity)."
                  + (f" Mismatches: {'; '.join(k['mismatches'])}." if k["mismatches"] else "")]
    if f:
        for name, t in f["targets"].items():
            lines.append(f"- **Fuzzing, {FUZZ_TARGETS[name]}** ({f['engine']}, {f['seconds_per_target']} s, {_when(f)}): "
                         f"{t['executions']} executions, "
                         + (f"findings: {'; '.join(t['findings'])}." if t["findings"] else "no findings."))
    if s:
        growth = s["growth_percent"]
        gap = s["field_gap_s"] or {"median": 0, "max": 0}
        lines.append(f"- **Soak** ({_when(s)}): `edge run` for {s['minutes']} min on synthetic fields (annotated fields, review "
                     f"queue and SQLite on), {s['fields']} fields and {s['cells']} cells at {s['fields_per_s']} "
                     f"fields/s; after {s['warmup_s']:.0f} s of warm-up, growth of resident memory "
                     f"{growth['rss_mib']:+.1f} % ({s['rss_mib']['after_warmup']:.0f} -> {s['rss_mib']['last']:.0f} MiB, "
                     f"max {s['rss_mib']['max']:.0f}), open files {growth['open_files']:+.1f} % "
                     f"({s['open_files']['min']}-{s['open_files']['max']}), threads {growth['threads']:+.1f} % "
                     f"({s['threads']['min']}-{s['threads']['max']}); time between fields median "
                     f"{gap['median']:.2f} s, max {gap['max']:.2f} s. "
                     + ("Within the 5 % target." if s["within_target"] else "**Outside the 5 % target.**"))
    return "\n".join(lines)


def _when(section: dict) -> str:
    return f"{section['date']}, {section['machine']}, `{section['command']}`"


def write_doc(doc: Path, text: str) -> None:
    content = doc.read_text()
    head, rest = content.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    doc.write_text(f"{head}{MARK_START}\n{text}\n{MARK_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="soak length (0: no soak)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between soak samples")
    p.add_argument("--warmup-s", type=float, default=120.0, help="soak samples before this are warm-up")
    p.add_argument("--kills", type=int, default=100, help="SIGKILLs in all (0: none)")
    p.add_argument("--kills-per-session", type=int, default=4)
    p.add_argument("--kill-fields", type=int, default=30, help="synthetic fields in each killed session")
    p.add_argument("--fuzz-minutes", type=float, default=15.0, help="fuzzing time for all targets (0: none)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "reliability")
    p.add_argument("--doc", default=str(ROOT / "docs" / "reliability.md"), help="rewrite its figures section ('': none)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # Sections not run this time keep their last figures, each with its own date and command.
    saved = args.out / "figures.json"
    figures = json.loads(saved.read_text()) if saved.exists() else {}
    run = {"date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "command": "python benchmarks/reliability_runner.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.kills:
        figures["kill_resume"] = run | kill_resume(args.out / "kills", args.kills, args.kills_per_session,
                                                 args.kill_fields, args.seed)
    if args.fuzz_minutes:
        figures["fuzz"] = run | fuzz(args.out, args.fuzz_minutes)
    if args.minutes:
        figures["soak"] = run | soak(args.out, args.minutes, args.sample_s, min(args.warmup_s, args.minutes * 60 / 3))
    saved.write_text(json.dumps(figures, indent=2))
    text = markdown(figures)
    print(text)
    if args.doc:
        write_doc(Path(args.doc), text)
    ok = (not figures.get("kill_resume") or not figures["kill_resume"]["mismatches"]) and \
        all(not t["findings"] for t in figures.get("fuzz", {}).get("targets", {}).values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
