"""Adversarial audit of text detectors: PETGEN generator, baselines, quality metrics, defence."""
