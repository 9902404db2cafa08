"""Off-topic detectors: discovery, matched random controls (the file format is `schema.DetectorsFile`)."""

RULES = ("strict", "auc")  # strict: 0 on matched pairs, active on >= 80% of mismatched; auc: AUC >= min
