"""Tasks: family-aware pre-processing, run and post-processing around pooled sessions."""
