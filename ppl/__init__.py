"""ppl: a probabilistic programming language for steering language models."""
