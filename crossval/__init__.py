"""crossval package of bitnet-ref."""
