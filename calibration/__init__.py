"""Reject thresholds and reject-option metrics for the classifier (numpy only)."""
from calibration.binomial import betainc, binomial_cdf, clopper_pearson_upper
from calibration.metrics import (RejectMetrics, aurc, reject_metrics, risk_coverage_curve,
                                 threshold_from_json, threshold_to_json)
from calibration.thresholds import (METHODS, ThresholdFit, apply_thresholds, ccl_confidence,
                                    fit_threshold, fit_threshold_descending,
                                    fit_threshold_guaranteed, per_class_thresholds)

__all__ = [
    "METHODS", "RejectMetrics", "ThresholdFit", "apply_thresholds", "aurc", "betainc",
    "binomial_cdf", "ccl_confidence", "clopper_pearson_upper", "fit_threshold",
    "fit_threshold_descending", "fit_threshold_guaranteed", "per_class_thresholds",
    "reject_metrics", "risk_coverage_curve", "threshold_from_json", "threshold_to_json",
]
