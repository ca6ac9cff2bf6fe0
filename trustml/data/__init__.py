"""Data plugins: each loads train/val/test splits once and serves dict batches (x, y, index)."""
