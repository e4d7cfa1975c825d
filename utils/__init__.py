"""Shared helpers for the CvT-Paddle scripts: environment, weights, config, logging."""
