"""Reject thresholds and reject-option metrics for the classifier (numpy only)."""
from calibration.binomial import betainc, binomial_cdf, clopper_pearson_upper
from calibration.conformal import ConformalPredictor, IcpFit, fit_icp, icp_confidence, icp_decisions
from calibration.metrics import (RejectMetrics, RejectReport, aurc, decision_metrics, reject_metrics,
                                 reject_report, risk_coverage_curve, threshold_from_json,
                                 threshold_to_json)
from calibration.rules import RULES, RuleFit, class_probabilities, fit_rule, rules_for_head
from calibration.thresholds import (METHODS, ThresholdFit, apply_thresholds, ccl_confidence,
                                    fit_threshold, fit_threshold_descending,
                                    fit_threshold_guaranteed, per_class_thresholds)

__all__ = [
    "METHODS", "RULES", "ConformalPredictor", "IcpFit", "RejectMetrics", "RejectReport", "RuleFit",
    "ThresholdFit", "apply_thresholds", "aurc", "betainc", "binomial_cdf", "ccl_confidence",
    "class_probabilities", "clopper_pearson_upper", "decision_metrics", "fit_icp", "fit_rule",
    "fit_threshold", "fit_threshold_descending", "fit_threshold_guaranteed", "icp_confidence",
    "icp_decisions", "per_class_thresholds", "reject_metrics", "reject_report",
    "risk_coverage_curve", "rules_for_head", "threshold_from_json", "threshold_to_json",
]
