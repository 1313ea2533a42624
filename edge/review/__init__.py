"""Expert review of rejected cells: export an offline archive, take the labels back.

Torch-free like the rest of edge/. `edge review export` and `edge review import`
are the commands; archive_export and label_import are their entry points.

May import: edge.runtime, edge.counting (the session's records and review queue), `calibration`.
"""


class ReviewError(ValueError):
    """A session, archive or labels file that cannot be used; one line for the user."""


NOT_A_CELL = "not_a_cell"
UNSURE = "unsure"
