"""edge-bench from the command line: one run, a sweep, refusals, and compare."""
import copy
import csv
import json

import cv2
import pytest

from edge import DEFAULT_BUNDLE
from edge.bench.cli import main
from edge.bench.pipeline import STAGES
from edge.bench.report import compare_reports
from edge.counting.sources import DEMO_FIELDS
from tests.helpers import SYNTHETIC_BUNDLE

TINY = ["--bundle", str(SYNTHETIC_BUNDLE), "--source", "synthetic:frames=2,seed=1", "--frame-size", "320x256",
        "--threads", "1"]
STABLE_KEYS = {"fields_per_s", "cells_per_s", "latency_ms", "stages", "backend", "precision", "batch", "tile",
               "frame_size", "machine", "roofline"}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "one.json"
    assert main(TINY + ["--frames", "3", "--warmup", "1", "--json", str(out)]) == 0
    return out


def test_one_run_reports_every_stage_and_the_stable_keys(single, capsys):
    report = json.loads(single.read_text())
    assert STABLE_KEYS <= set(report)
    assert report["frames"] == 3 and report["frame_size"] == "320x256" and report["fields_per_s"] > 0
    assert list(report["stages"]) == list(STAGES)
    for s in report["stages"].values():
        assert {"p50_ms", "p99_ms", "share"} <= set(s) and s["p50_ms"] <= s["p99_ms"]
    assert abs(sum(s["share"] for s in report["stages"].values()) - 1) < 1e-6
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert report["cells"] == report["accepted"] + report["rejected"] and report["cells"] > 0
    fields = report["fields"]
    assert (fields["timed"], fields["counted"], fields["refused"], fields["refused_by"]) == (3, 3, 0, {})
    per_field = fields["cells_per_field"]
    assert per_field["mean"] * 3 == pytest.approx(report["cells"]) and per_field["min"] <= per_field["max"]
    assert report["counted_fields_per_s"] == pytest.approx(report["fields_per_s"])
    assert report["quality_gate"]["enabled"] and report["stages"]["quality"]["p50_ms"] > 0
    assert "um_per_px=0.25" in report["source"]  # synthetic fields drawn at the bundle's pixel size
    assert report["accepted"] == sum(report["counts"].values())
    assert report["cpu_use"] > 0 and report["peak_rss_mb"] > 0
    for model in ("detector", "classifier"):
        roof = report["roofline"][model]
        assert {"ops_per_input", "achieved_ops_per_s", "peak_ops_per_s"} <= set(roof)
        assert roof["ops_per_input"] > 0 and roof["peak_ops_per_s"] > 0
    assert report["roofline"]["detector"]["inputs"] == 3 * 2  # 320x256 in 256-px tiles: 2 across, 1 down
    assert report["machine"]["cores"] >= 1 and report["tegrastats"] is None
    rows = list(csv.DictReader(open(single.with_suffix(".csv"))))
    assert len(rows) == 1 and float(rows[0]["fields_per_s"]) == pytest.approx(report["fields_per_s"])
    assert (rows[0]["fields_counted"], rows[0]["fields_refused"]) == ("3", "0")
    assert cv2.imread(str(single.with_name("one-cdf.png"))).shape == (560, 960, 3)


def test_sweep_runs_the_whole_grid(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert main(TINY + ["--frames", "1", "--warmup", "0", "--batch", "1,4", "--tile", "256,320",
                        "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["sweep"] == ["tile", "batch"]
    assert [(r["tile"], r["batch"]) for r in report["runs"]] == [(256, 1), (256, 4), (320, 1), (320, 4)]
    assert len(list(csv.DictReader(open(out.with_suffix(".csv"))))) == 4
    for name in ("sweep-cdf-1.png", "sweep-cdf-4.png", "sweep-throughput-batch.png", "sweep-throughput-tile.png"):
        assert cv2.imread(str(tmp_path / name)) is not None, name
    table = capsys.readouterr().out
    assert "[4/4] tile 320, batch 4" in table and "fields/s" in table and "counted" in table


def test_the_default_source_is_the_real_demo_fields(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["--frames", "2", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bundle"] == str(DEFAULT_BUNDLE) and report["frame_size"] == "640x480"
    assert report["source"].startswith("the demo fields") and str(DEMO_FIELDS) in report["source"]
    assert report["fields"]["counted"] == 2 and report["fields"]["cells_per_field"]["min"] >= 1
    assert "fields: 2 of 2 counted, none refused; cells per counted field" in capsys.readouterr().out


def test_a_mosaic_run_times_one_large_frame_of_demo_fields(tmp_path, capsys):
    out = tmp_path / "mosaic.json"
    assert main(["--mosaic", "2x1", "--frames", "1", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frame_size"] == "1280x480" and report["source"].startswith("mosaic of 2 x 1 fields of 640x480")
    assert report["fields"]["counted"] == 1 and report["cells"] >= 2


@pytest.mark.parametrize("batch", ["16", "1,4"])
def test_nothing_counted_is_said_plainly_and_exits_non_zero(batch, tmp_path, capsys):
    """The default bundle's quality gate refuses the synthetic smears' stain: no field is counted."""
    out = tmp_path / "refused.json"
    assert main(["--source", "synthetic:frames=1,width=320,height=256,um_per_px=0.25", "--frames", "2",
                 "--warmup", "0", "--threads", "1", "--batch", batch, "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    for run in report.get("runs", [report]):
        assert run["fields"] == {"timed": 2, "counted": 0, "refused": 2, "refused_by": {"stain": 2},
                                 "cells_per_field": None}
        assert run["cells"] == 0 and run["stages"]["detect"]["p50_ms"] == 0
    captured = capsys.readouterr()
    assert captured.err.count("edge-bench: no field was counted") == len(batch.split(","))
    assert "2 refused by the quality gate (stain 2)" in captured.err
    if "," not in batch:
        assert "NO FIELD COUNTED" in captured.out


@pytest.mark.parametrize("args, message", [
    (["--precision", "int8"], "holds a fp32 detector and a fp32 classifier"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--batch", "0"], "not a positive whole number"),
    (["--frame-size", "640"], "is not WIDTHxHEIGHT"),
    (["--tile", "64"], "larger than the bundle's overlap"),
    (["--frames", "0"], "--frames must be at least 1"),
    (["--source", "/no/such/folder"], "unknown source"),
    (["--mosaic", "2x2", "--frame-size", "640x480"], "--mosaic and --frame-size: give one"),
])
def test_bad_options_are_one_line_errors(args, message, capsys):
    assert main(["--bundle", str(SYNTHETIC_BUNDLE), "--source", "synthetic:frames=1", "--frames", "1", "--warmup", "0"]
                + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compare_prints_stage_by_stage_ratios(single, tmp_path, capsys):
    a = json.loads(single.read_text())
    b = copy.deepcopy(a)
    for s in b["stages"].values():
        s["p50_ms"], s["p99_ms"] = 2 * s["p50_ms"], 2 * s["p99_ms"]
    b["latency_ms"] = {k: v * 2 for k, v in a["latency_ms"].items()}
    b["fields_per_s"], b["cells_per_s"], b["batch"] = a["fields_per_s"] / 2, a["cells_per_s"] / 2, 99
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["compare", str(single), str(tmp_path / "b.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("B / A") and "batch" in lines[0] and "-> 99" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    for stage in STAGES:
        if a["stages"][stage]["p50_ms"] > 0:
            assert rows[stage][3] == "2.00", stage
    assert rows["field"][3] == rows["field"][6] == "2.00"
    assert rows["fields/s"][3] == "0.50"


def test_compare_pairs_sweep_runs_by_grid_point(single):
    a = json.loads(single.read_text())
    other = dict(a, batch=a["batch"] + 1)
    text = compare_reports({"sweep": ["batch"], "runs": [a, other]}, {"sweep": ["batch"], "runs": [other]})
    assert text.count("B / A") == 1 and "->" not in text.splitlines()[0]


def test_compare_refuses_a_file_that_is_no_report(single, tmp_path, capsys):
    (tmp_path / "x.json").write_text(json.dumps({"accuracy": 0.9}))
    assert main(["compare", str(single), str(tmp_path / "x.json")]) == 2
    assert "is not an edge-bench report" in capsys.readouterr().err


def test_edge_bench_is_also_edge_bench_subcommand(capsys):
    from edge.cli import main as edge_main
    assert edge_main(["bench", "--frames", "0"]) == 2
    assert "edge-bench: error: --frames must be at least 1" in capsys.readouterr().err
