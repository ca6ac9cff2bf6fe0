"""Empirical privacy audits: membership inference (LOSS, offline LiRA) and canary exposure.

The attack math is pure functions of per-example losses / logits (numpy or torch arrays), so it is
testable on synthetic scores; running the target and shadow models is the caller's job.
"""
