"""The ``trustml`` CLI with the seq2seq plugins registered (``data=topical_chat_grounded``, ``model=hf_seq2seq``,
``method=seq2seq``), for as long as they are not among ``trustml.registry.BUILTIN_PLUGIN_MODULES``."""

import trustml.knobs.grounded_data  # noqa: F401 - registers data=topical_chat_grounded
import trustml.knobs.seq2seq_model  # noqa: F401 - registers model=hf_seq2seq
import trustml.methods.seq2seq  # noqa: F401 - registers method=seq2seq
from trustml.cli.main import main

if __name__ == "__main__":
    main()
