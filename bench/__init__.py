"""bench package of bitnet-ref."""
