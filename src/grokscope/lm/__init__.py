"""Copying in language models (docs/measures.md, part 2; Lv et al. 2024, "Language Models 'Grok' to Copy").

llama.py (the decoder; it lives in grokscope.models.llama, beside the other model family, and is
re-exported here), text.py and rdata.py (offline corpus: books and the Python standard library;
tokenizers, packed tokens), copytest.py (the paper's copy test and its hex and random-id variants),
induction.py (per-head induction scores, ICL score), trainer.py (minibatch training with
evaluation on a log-spaced schedule), ddp.py (torchrun), analysis.py (`analyze_lm_run`, the
summary of a run, and the measurements of the paper's claims).
"""
