"""Tasks, TFDS loading, few-shot sampling, tokenization and batching."""
