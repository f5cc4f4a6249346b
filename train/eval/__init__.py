"""Metrics and one evaluation module per task family."""
