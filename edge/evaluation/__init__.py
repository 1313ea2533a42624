"""Measuring and fitting a bundle on labelled data: `edge eval detect|classify|fields`, `edge calibrate`
(thresholds, site recalibration from reviewed cells), detection metrics and report plots.

May import: edge.runtime, edge.counting, edge.review, edge.synthetic, `calibration`.
"""
