"""grokscope: train small transformers, watch them grok, and explain why.

Data flows one way: config -> tasks -> models -> train -> store -> analysis -> report, with
sweep, pipeline and cli on top (docs/architecture.md, "The flow").

Imports go one way too. Every module belongs to the layer named by its top-level module or
package (`grokscope.models.tl` is in `models`), and imports only its own layer and the layers
before it, lowest first:

    config -> experiments -> store -> tasks -> models -> train -> lm -> analysis -> report
    -> pipeline -> sweep -> cli

The store sits low because every stage after it reads or writes the run folder through it
(`store.read_run_config` is the one reader of a run's validated config). `models` holds both
model families, found by `model.arch` (`models.loading.FAMILIES`); `lm`, the copy LM's data,
trainer and measures, sits at the trainer's level. No two modules import each other, even inside
functions, and none uses another's private names: tests/test_layers.py checks all of this.
This module holds only the version, so that any layer may read it.
"""

__version__ = "0.1.0"
