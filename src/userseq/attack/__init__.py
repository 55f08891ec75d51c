"""Adversarial audit of text detectors: PETGEN generator, baselines, quality metrics, report
(the defence, adversarial training, is `userseq.detect.augment`)."""
