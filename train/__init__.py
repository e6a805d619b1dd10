"""Training of PaSS look-ahead vectors: data pipeline, loss and loop."""
