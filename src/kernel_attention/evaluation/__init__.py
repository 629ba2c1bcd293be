"""Evaluation: decoding the test set and scoring it (BLEU, perplexity)."""
