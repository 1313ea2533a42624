"""Command-line options that every resumable training command of `edge export` shares."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from OUT/last.pt if it exists")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-side", type=int, metavar="PX",
                        help="decode every image once and keep it in memory, its longer side shrunk to PX "
                             "(at least the largest input size; much faster epochs on a CPU)")


def add_framing_option(parser: argparse.ArgumentParser) -> None:
    from edge import DEFAULT_BUNDLE
    parser.add_argument("--framing-bundle", type=Path, default=DEFAULT_BUNDLE, metavar="BUNDLE",
                        help="the bundle whose detector and crop context frame each training image's cell, "
                             "as the device frames cells in a field (default: the shipped bundle)")


def fractions(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions between 0 and 1, e.g. 0.3,0.6")
    return values


def names(text: str) -> tuple[str, ...]:
    parts = tuple(n.strip() for n in text.split(",") if n.strip())
    if not parts:
        raise argparse.ArgumentTypeError("give at least one name, comma-separated")
    return parts
