"""`edge export ...`: the offline model-making commands (need the export extra)."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path

from edge import DEFAULT_BUNDLE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge export", description="Make models and bundles.")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    syn = sub.add_parser("synthetic-bundle",
                         help="train tiny models on synthetic smears and write a bundle (the default bundle's recipe)")
    syn.add_argument("--out", type=Path, default=DEFAULT_BUNDLE)
    syn.add_argument("--work", type=Path, default=Path("runs/synthetic-bundle"),
                     help="checkpoints and report; a rerun resumes from them")
    from export.synthetic_bundle import SyntheticBundleRecipe
    for f in fields(SyntheticBundleRecipe):
        syn.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    syn.set_defaults(handler=_synthetic_bundle)

    args = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.INFO)  # `edge` may have configured the root already
    if not hasattr(args, "handler"):
        p.print_help()
        return 2
    return args.handler(args)


def _synthetic_bundle(args) -> int:
    from export.synthetic_bundle import SyntheticBundleRecipe, make_synthetic_bundle
    recipe = SyntheticBundleRecipe(**{f.name: getattr(args, f.name) for f in fields(SyntheticBundleRecipe)})
    report = make_synthetic_bundle(args.out, recipe, args.work)
    print(json.dumps({k: v for k, v in report.items() if k != "classifier"} | {
        "classifier_validation": report["classifier"]["validation"]}, indent=2, default=str))
    return 0
