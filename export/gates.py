"""Accuracy gates: the figures a quantised student must reach before its bundle may be written.

All three are measured on the validation split, which neither the
quantisation ranges nor the reject threshold were fitted on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


class GateError(ValueError):
    """A model that fails one or more gates; the message names each and by how much."""


@dataclass(frozen=True)
class Gates:
    min_accuracy: float = 0.90           # validation accuracy of the deployed model
    min_agreement: float = 0.90          # share of validation cells where it predicts what the teacher predicts
    min_accepted_accuracy: float = 0.98  # accuracy of the accepted validation cells at the fitted threshold
    max_detector_recall_drop: float = 0.02  # INT8 detector's recall below the FP32 detector's, same tiles

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"gate {name} must be in [0, 1], got {value}")

    def to_dict(self) -> dict:
        return asdict(self)


_GATED = (("accuracy", "min_accuracy", "accuracy"),
          ("agreement", "min_agreement", "agreement with the teacher"),
          ("accepted_accuracy", "min_accepted_accuracy", "accepted accuracy at the threshold"))


def gate_failures(figures: dict, gates: Gates) -> list[str]:
    """One phrase per failed gate, e.g. 'accuracy 0.8710 < 0.9000 (short by 0.0290)'."""
    failed = []
    for key, gate, label in _GATED:
        value, bound = figures.get(key), getattr(gates, gate)
        if value is None:
            failed.append(f"{label} undefined (no validation cell accepted) < {bound:.4f}")
        elif value < bound:
            failed.append(f"{label} {value:.4f} < {bound:.4f} (short by {bound - value:.4f})")
    return failed


def check_gates(figures: dict, gates: Gates, what: str) -> None:
    """Raise GateError naming every gate `what` fails; return quietly when all pass."""
    failed = gate_failures(figures, gates)
    if failed:
        raise GateError(f"{what} fails {len(failed)} accuracy gate{'s' if len(failed) > 1 else ''}: "
                        f"{'; '.join(failed)}; no bundle written")


def check_detector_gate(fp32_recall: float | None, int8_recall: float | None, gates: Gates) -> None:
    """Raise GateError when the INT8 detector loses more recall than the gate allows."""
    if fp32_recall is None or int8_recall is None:
        raise GateError("the detector gate needs tiles with cells; no bundle written")
    drop = fp32_recall - int8_recall
    if drop > gates.max_detector_recall_drop:
        raise GateError(f"the INT8 detector fails its accuracy gate: recall {int8_recall:.4f} is {drop:.4f} "
                        f"below the FP32 detector's {fp32_recall:.4f} (allowed {gates.max_detector_recall_drop:.4f}, "
                        f"exceeded by {drop - gates.max_detector_recall_drop:.4f}); no bundle written")
