"""Evaluation through lmms-eval: offline tasks, sweeps over compressors, reports."""
