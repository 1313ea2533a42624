"""The archive's cells as COCO detection JSON: the context images with the cells' boxes.

Categories are the bundle's classes; each annotation's category is the
machine's suggestion, with its confidence as `score` and the cell id alongside.
"""
from __future__ import annotations


def coco_json(manifest: dict) -> dict:
    categories = [{"id": i + 1, "name": n, "supercategory": "cell"} for i, n in enumerate(manifest["class_names"])]
    category_id = {c["name"]: c["id"] for c in categories}
    images: dict[str, dict] = {}
    annotations = []
    for cell in manifest["cells"]:
        ctx = cell["context"]
        if ctx is None:
            continue
        image = images.setdefault(ctx["image"], {"id": len(images) + 1, "file_name": ctx["image"],
                                                 "width": ctx["width"], "height": ctx["height"]})
        x1, y1, x2, y2 = ctx["box"]
        annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                            "category_id": category_id[cell["suggested"]],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                            "score": cell["confidence"], "cell_id": cell["cell_id"], "kind": cell["kind"]})
    return {"info": {"description": "edge review archive " + manifest["archive_id"],
                     "date_created": manifest["created"],
                     "cells_without_context": len(manifest["cells"]) - len(annotations)},
            "images": list(images.values()), "annotations": annotations, "categories": categories}
