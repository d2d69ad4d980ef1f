"""Exemplar: compact example-based explanations for language models."""

__version__ = "0.1.0"
