"""Expert-labelled crops as a folder per class, the layout training and `edge eval classify` read."""
from __future__ import annotations

import shutil
from pathlib import Path

from edge.runtime.atomic import atomic_file


def write_class_folders(out: Path, items: list[tuple[str, str, Path]], class_names: tuple[str, ...]) -> int:
    """items: (cell id, class, crop file). A cell relabelled since an earlier run moves to its new folder."""
    out = Path(out)
    for name in class_names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for cell_id, label, crop in items:
        target = out / label / f"{cell_id}.png"
        with open(crop, "rb") as src, atomic_file(target) as dst:
            shutil.copyfileobj(src, dst)
        for other in class_names:
            if other != label:
                (out / other / target.name).unlink(missing_ok=True)
    return len(items)
