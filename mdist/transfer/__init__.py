"""Zero- and few-shot cross-lingual transfer (thesis §3.3)."""
