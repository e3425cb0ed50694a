"""Reading user files into a validated Corpus: one reader for every format, encoding and delimiter detection."""
