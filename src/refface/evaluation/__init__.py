"""Evaluation of restorations against ground truth: the metrics of the ReF-LDM and Composite-Context tables."""
