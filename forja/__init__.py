"""Forja: raw text in, a trained, tracked, reproducible causal language model out."""

__version__ = "0.1.0"
