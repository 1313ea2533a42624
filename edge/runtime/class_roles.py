"""What each class of a bundle is, for the differential a haematology lab reads (CLSI H20-A2, ICSH):
percentages are of leukocytes only, nucleated red cells are reported per 100 leukocytes, and platelets
and any other class are counted apart.

A bundle says so in its manifest (`class_roles`: class -> leukocyte | nrbc | platelet | other). A
bundle that does not is read by the classes' names (the usual English names and abbreviations);
a name it does not know is `other`, so it never enters the leukocyte percentages unasked.
"""
from __future__ import annotations

LEUKOCYTE, NRBC, PLATELET, OTHER = "leukocyte", "nrbc", "platelet", "other"
ROLES = (LEUKOCYTE, NRBC, PLATELET, OTHER)

_BY_NAME = {
    **dict.fromkeys(("neutrophil", "segmented", "band", "lymphocyte", "monocyte", "eosinophil", "basophil",
                     "ig", "immature_granulocyte", "metamyelocyte", "myelocyte", "promyelocyte", "blast",
                     "myeloblast", "lymphoblast", "plasma_cell", "atypical_lymphocyte", "variant_lymphocyte",
                     "neu", "lym", "mon", "eos", "bas", "wbc", "leukocyte"), LEUKOCYTE),
    **dict.fromkeys(("erythroblast", "nrbc", "normoblast", "nucleated_red_cell"), NRBC),
    **dict.fromkeys(("platelet", "thrombocyte", "giant_platelet", "platelet_clump", "plt"), PLATELET),
}


def infer_roles(class_names) -> dict[str, str]:
    """Each class's role read from its name; unknown names are `other`."""
    return {n: _BY_NAME.get(n.strip().lower().replace(" ", "_").replace("-", "_"), OTHER) for n in class_names}


def check_roles(roles, class_names) -> dict[str, str]:
    """A manifest's class_roles: every class named once with a known role; ValueError otherwise."""
    if not isinstance(roles, dict) or set(roles) != set(class_names):
        raise ValueError("class_roles must give a role for each of the class_names, and only for them")
    wrong = sorted(n for n, r in roles.items() if r not in ROLES)
    if wrong:
        raise ValueError(f"class_roles of {', '.join(wrong)} must be one of {', '.join(ROLES)}")
    return dict(roles)
