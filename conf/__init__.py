"""Hydra configs of dlnlab, shipped with the package (the top-level conf/ folder)."""
