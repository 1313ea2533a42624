import json

from edge.bench import main


def test_bench_reports_stage_latencies(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--source", "synthetic:frames=3,seed=1", "--warmup", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 2 and report["fields_per_s"] > 0
    assert set(report["stages"]) == {"detect", "classify", "decide"}
    assert abs(sum(s["share"] for s in report["stages"].values()) - 1) < 0.05
    assert {"p50", "p90", "p99", "max"} == set(report["latency_ms"])
    assert "throughput" in capsys.readouterr().out


def test_bench_needs_more_frames_than_warmup(capsys):
    assert main(["--source", "synthetic:frames=1", "--warmup", "2"]) == 2
    assert "need more than --warmup" in capsys.readouterr().err
