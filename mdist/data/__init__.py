"""Training data: per-language token batches for Algorithm 1."""
