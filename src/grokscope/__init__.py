"""grokscope: train small transformers, watch them grok, and explain why.

Data flows one way: config -> task -> model -> trainer -> run store -> analysis -> report.
"""

__version__ = "0.1.0"
