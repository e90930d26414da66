"""Figures as PNG files: singular-value spectra (:mod:`.spectra`) and per-unit dynamics
(:mod:`.dynamics`)."""
