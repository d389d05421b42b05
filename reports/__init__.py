"""reports package of bitnet-ref."""
