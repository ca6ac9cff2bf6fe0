"""Fixtures of the knob tests (the offline MiniLM tokenizer, a toy Topical-Chat folder) reused here."""

from tests.knobs.conftest import batch, builder, tokenizer, toy_topical_chat  # noqa: F401 - pytest fixtures
