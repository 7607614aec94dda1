"""Models: the grokking transformer family and the Llama-style copy LM."""
