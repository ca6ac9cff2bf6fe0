"""Optimizer plugins: partials built with the trainable parameters."""
