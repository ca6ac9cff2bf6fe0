"""Federation runtimes: how training is distributed (``federation=none`` trains centrally)."""
