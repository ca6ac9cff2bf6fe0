"""Model plugins: networks mapping inputs to class logits, with ``embed`` (penultimate) and ``head``."""
