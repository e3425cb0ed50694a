"""Training loops: source fine-tuning, target adaptation, the head probe, callbacks and data parallelism."""
