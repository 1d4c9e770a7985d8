"""mdist: distil a multilingual encoder (XLM-R family) into language-specific student encoders."""

__version__ = "0.1.0"
