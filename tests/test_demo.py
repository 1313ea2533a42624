"""The demo's story on real cells (scripts/demo): a label-free site fit on the PBC-lab demo fields,
then a count with cells accepted, right against the labels in the file names, and a provisional
differential with the cells in review."""
from __future__ import annotations

import csv
import io
import json

from edge.cli import main
from edge.counting.runloop import run_session
from edge.counting.sources import DEMO_FIELDS

PBC_LAB = DEMO_FIELDS / "pbc-lab"


def test_the_demo_counts_real_cells_with_a_provisional_differential(tmp_path):
    assert main(["site", "fit", "--source", str(PBC_LAB), "--out", str(tmp_path / "site"),
                 "--json", str(tmp_path / "fit.json"), "--threads", "1"]) == 0
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["gate_after"]["passed"] == fit["fields_read"] == 18
    assert fit["pixel_size"]["source"].startswith("estimated from the red cells")

    results = run_session(tmp_path / "site", str(PBC_LAB), tmp_path / "s", threads=1, save_fields=False,
                          live=io.StringIO())
    d = results["leukocyte_differential"]
    assert d["leukocytes_accepted"] >= 10 and results["rejected"] >= 1 and d["provisional"]
    with open(tmp_path / "s" / "cells.csv", newline="") as fh:
        cells = list(csv.DictReader(fh))
    accepted = [c for c in cells if c["accepted"] == "1"]
    right = [c for c in accepted if c["frame_origin"].split("_")[0] == c["predicted"]]
    assert len(right) >= len(accepted) - 1  # the file names carry PBC's own labels
