"""Analysis: read a run's checkpoints, compute the mechanistic measures, write them to the store.

SPEC sections 2-4. Math lives in plain functions over tensors (fourier.py, circuits.py,
progress.py, phases.py); `runner.py` is the only module here that touches the run store.

What analysis writes (the report reads exactly this and computes nothing):

    RUN/analysis/summary.json      DESIGN.md's `analyze --json` keys, at least:
        key_frequencies [int], neuron_fve (share of neurons with max FVE > 0.85), logit_fve,
        restricted_loss, excluded_loss, test_loss, test_acc, gini_W_E, gini_W_L,
        phases {memorization|circuit_formation|cleanup: [start, end] epochs or null},
        plus: step (the checkpoint analysed), wl_residual, logit_fit_loss, ablations
        [{name, loss, acc}], attention_heads [{head, freq, fve}], phase_rule (text),
        gini_basis ("per frequency ..."), tables {name: [rows]} for the paper's tables.
    RUN/metrics.sqlite, table "progress": one row per checkpoint, columns
        step, epoch, train_loss, test_loss, train_acc, test_acc, restricted_loss,
        restricted_loss_train, restricted_loss_test, restricted_acc, excluded_loss,
        excluded_loss_k{K} (each key frequency alone), coef_k{K} (cos(w(a+b-c)) coefficient),
        gini_W_E, gini_W_L, weight_norm (sum of squared weights).
    RUN/analysis/figures.safetensors: arrays for the final checkpoint's figures:
        embed_spectrum [p] (norm per Fourier basis row), wl_spectrum [p],
        logit_fourier_norm [p, p] (2D Fourier norms of the logits over (a, b)),
        attention [n_heads, p, p] (attention from `=` to `a`), neuron_ids [n],
        neuron_acts [n, p, p], neuron_fourier [n, p, p], neuron_fve [d_mlp], neuron_freq [d_mlp],
        cluster_wl_fourier [p, m] (W_L columns of the largest cluster, in the Fourier basis),
        cluster_freq [] (that cluster's frequency).
"""
