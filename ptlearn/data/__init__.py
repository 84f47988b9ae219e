"""Data: jsonl reading with located errors, converters for the reference data sets, batching."""
