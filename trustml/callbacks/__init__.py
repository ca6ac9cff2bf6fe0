"""Lightning callbacks of the run record (per-epoch metrics and timing)."""
