"""The classifier: backbone resolution, tokenisation, precision, scoring, embeddings and calibration maps."""
