"""The pixel size read off the red cells: the same ruler at any magnification, a clear reason when a
field has too few red cells (the last good estimate is kept), and the whole path (site ruler, then
edge run and edge eval detect without --pixel-size) counting fields of another magnification."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.evaluation.evaluate import evaluate_detector
from edge.runtime.bundle import BundleError, load_bundle
from edge.runtime.frame_scale import FrameScale
from edge.runtime.red_cell_ruler import PixelSizeRuler, median_interval, read_red_cells
from edge.synthetic.smear import RBC_DIAMETER_UM, SmearConfig, render_field
from tests.helpers import SYNTHETIC_BUNDLE


def field_at(px_per_um: float, seed: int = 0, **config) -> np.ndarray:
    side = dict(width=int(160 * px_per_um), height=int(120 * px_per_um))
    return render_field(SmearConfig(px_per_um=px_per_um, **(side | config)), seed=seed).image


def test_the_modal_chord_follows_the_magnification():
    ratios = []
    for px_per_um in (3.0, 6.0, 12.0):
        readings = [read_red_cells(field_at(px_per_um, seed=seed)) for seed in range(5)]
        assert all(r.reason is None and r.red_cells >= 20 for r in readings)
        ratios.append(np.median([r.chord_px for r in readings]) / (RBC_DIAMETER_UM * px_per_um))
    assert 0.8 < min(ratios) and max(ratios) < 1.05
    assert max(ratios) / min(ratios) < 1.1, ratios  # one ruler at every magnification (5 fields each)


def test_a_field_without_red_cells_gives_a_reason_and_the_last_estimate_is_kept():
    sparse = field_at(4.0, rbc_per_mpx=0, platelets_per_mpx=0, nucleated_per_mpx=10)  # a few white cells
    empty = read_red_cells(sparse)
    assert empty.chord_px is None and "too few red cells" in empty.reason
    blank = read_red_cells(np.full((300, 400, 3), 230, np.uint8))
    assert blank.chord_px is None and blank.reason
    ruler = PixelSizeRuler(chord_um=RBC_DIAMETER_UM)
    ruler.observe(field_at(4.0, seed=2))
    before = ruler.pixel_size_um
    assert before == pytest.approx(0.25, rel=0.15)
    ruler.observe(sparse)
    assert ruler.pixel_size_um == before and ruler.without_reading == 1
    record = ruler.record()
    assert record["fields_read"] == 1 and record["interval95"] == [None, None]  # too few for an interval
    assert record["last_reason_without_reading"]


def test_the_median_interval_uses_the_binomial_ranks():
    assert median_interval(list(range(5))) == (None, None)
    assert median_interval(list(range(1, 11))) == (2, 9)      # n = 10: ranks 2 and 9 (97.9 %)
    assert median_interval(list(range(1, 7))) == (1, 6)       # n = 6: the extremes (96.9 %)


def test_a_settled_estimate_reads_one_field_in_ten():
    ruler = PixelSizeRuler(chord_um=7.0)
    image = field_at(4.0, seed=3)
    reads = sum(ruler.observe(image) is not None for _ in range(60))
    assert reads == 20 + 4  # every field up to 20 readings, then fields 30, 40, 50, 60


def test_a_ruler_needs_a_stated_pixel_size(tmp_path):
    manifest = json.loads((SYNTHETIC_BUNDLE / "manifest.json").read_text())
    root = tmp_path / "b"
    import shutil
    shutil.copytree(SYNTHETIC_BUNDLE, root)
    manifest["tiling"]["red_cell_chord_um"] = 40.0
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="red_cell_chord_um"):
        load_bundle(root)


@pytest.fixture(scope="module")
def ruled(tmp_path_factory):
    """The synthetic bundle (4 px per um) with its ruler read on its own kind of fields."""
    root = tmp_path_factory.mktemp("ruled")
    fields = root / "own"
    fields.mkdir()
    for seed in range(6):
        cv2.imwrite(str(fields / f"f{seed}.png"), field_at(4.0, seed=seed))
    assert main(["site", "ruler", "--bundle", str(SYNTHETIC_BUNDLE), "--source", str(fields),
                 "--out", str(root / "bundle"), "--json", str(root / "ruler.json")]) == 0
    return root


def test_site_ruler_states_the_chord_in_micrometres(ruled):
    report = json.loads((ruled / "ruler.json").read_text())
    bundle = load_bundle(ruled / "bundle")
    assert report["fields_with_red_cells"] == 6
    assert bundle.tiling.red_cell_chord_um == pytest.approx(report["red_cell_chord_um"])
    assert 0.8 * RBC_DIAMETER_UM < bundle.tiling.red_cell_chord_um < 1.05 * RBC_DIAMETER_UM
    assert bundle.provenance["red_cell_ruler"]["at_um_per_pixel"] == 0.25


def test_a_field_at_another_magnification_is_counted_without_a_setting(ruled, tmp_path):
    bundle = load_bundle(ruled / "bundle")
    scale = FrameScale(bundle)
    image = field_at(8.0, seed=7)
    assert scale.observe(image).tiling.pixel_size_um == pytest.approx(0.125, rel=0.08)
    assert FrameScale(bundle, pixel_size_um=0.2).observe(image).tiling.pixel_size_um == 0.2  # a setting wins
    assert FrameScale(bundle, estimate=False).observe(image) is bundle

    data = tmp_path / "voc"
    write_voc(data, [render_field(SmearConfig(width=1280, height=960, px_per_um=8.0), seed=s) for s in range(3)])
    report = evaluate_detector(ruled / "bundle", data, "voc", ["WBC"], split="test", threads=1)
    assert report["pixel_size"]["source"].startswith("estimated from the red cells")
    assert report["pixel_size"]["um_per_pixel"] == pytest.approx(0.125, rel=0.08)
    assert report["recall"] >= 0.95
    unruled = evaluate_detector(SYNTHETIC_BUNDLE, data, "voc", ["WBC"], split="test", threads=1)
    assert unruled["recall"] < 0.8 and "no red-cell ruler" in unruled["pixel_size"]["source"]


def test_edge_run_records_the_estimate(ruled, tmp_path, capsys):
    out = tmp_path / "session"
    assert main(["run", "--bundle", str(ruled / "bundle"), "--source", "synthetic:frames=2,seed=4",
                 "--out", str(out), "--no-save-fields", "--threads", "1", "--max-frames", "2"]) in (0, 1)
    record = json.loads((out / "results.json").read_text())["pixel_size"]
    assert record["source"].startswith("estimated from the red cells")
    assert record["um_per_pixel"] == pytest.approx(0.25, rel=0.08)
    assert record["estimate"]["fields_read"] == 2
    shown = f"pixel size {record['um_per_pixel']:.4f} um: estimated from the red cells in the fields over 2 fields"
    assert shown in capsys.readouterr().out


def write_voc(root, fields) -> None:
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    names = []
    for i, f in enumerate(fields):
        name = f"f{i}"
        names.append(name)
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), f.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        objects = "".join(
            f"<object><name>WBC</name><difficult>0</difficult><bndbox><xmin>{b[0]:.0f}</xmin><ymin>{b[1]:.0f}"
            f"</ymin><xmax>{b[2]:.0f}</xmax><ymax>{b[3]:.0f}</ymax></bndbox></object>" for b in f.boxes)
        h, w = f.image.shape[:2]
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names) + "\n")


def test_a_reading_outside_a_microscopes_scale_is_not_used():
    ruler = PixelSizeRuler(chord_um=5000.0)  # as if the red cells were millimetres across
    reading = ruler.observe(field_at(4.0, seed=2))
    assert reading.chord_px is None and "outside a microscope's" in reading.reason
    assert ruler.pixel_size_um is None and ruler.without_reading == 1


def test_an_estimate_the_bundle_cannot_resize_to_is_ignored_and_the_last_scale_kept(ruled):
    from dataclasses import replace
    bundle = load_bundle(ruled / "bundle")
    zoomed = replace(bundle, tiling=replace(bundle.tiling, scale=6.0))  # frames already enlarged 6x
    scale = FrameScale(zoomed)
    kept = scale.observe(field_at(1.5, seed=4))  # 0.67 um per pixel would need a 16x resize
    assert kept is zoomed and scale.ruler.pixel_size_um is None
    assert "impossible resize" in scale.ruler.last_reason


def test_crowded_red_cells_with_pale_centres_still_read_a_whole_diameter():
    """Seed 0 of this crowded smear read half the diameter before the mask was closed (broken rims)."""
    config = SmearConfig(width=1280, height=960, px_per_um=8.0, rbc_per_mpx=300)
    reading = read_red_cells(render_field(config, seed=0).image)
    assert 0.8 < reading.chord_px / (RBC_DIAMETER_UM * 8.0) < 1.05
