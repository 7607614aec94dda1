"""Analysis: read a run's checkpoints, compute the mechanistic measures, write them to the store.

docs/measures.md, part 1, defines every measure. Math lives in plain functions over tensors (fourier.py, circuits.py,
mlp.py, attention.py, progress.py, phases.py, llc.py: the local learning coefficient by SGLD, `analyze --llc`);
forecast.py (the grokking forecast, `grokscope forecast`) works on the stored curves as DataFrames and writes
nothing. `runner.py` is the only module here that touches the run store.

What analysis writes (the report reads exactly this and computes nothing):

    RUN/analysis/summary.json      what `analyze --json` prints, at least:
        key_frequencies [int] (the paper's rule: W_L's DFT), neuron_fve (share of neurons whose best
        key-frequency FVE > 0.85), logit_fve,
        restricted_loss, excluded_loss, test_loss, test_acc, gini_W_E, gini_W_L,
        phases {memorization|circuit_formation|cleanup: [start, end] epochs or null},
        plus: step (the checkpoint analysed), wl_residual, logit_fit_loss, ablations
        [{name, loss, acc, test_loss, test_acc}], attention_heads [{head, freq, fve, alpha, beta,
        b_spread, pattern_freq, pattern_fve, std}] (freq/fve: the pre-softmax score's wave fit),
        phase_rule (text), gini_basis ("per frequency ..."), tables {name: [rows]} for the
        paper's tables (key_frequencies, ablations, attention_heads, model).
        Also: epoch, p, op, train_loss, train_acc, restricted_acc, restricted_loss_test,
        weight_norm, neurons_explained (count), neuron_fve_mean, neuron_fve_weighted (share of
        the neuron->logit weight var*|W_L row|^2 on explained neurons), key_rule (text),
        key_frequencies_source, per_checkpoint_keys, frequency_shares {k: share},
        logit_coefs {k: coef}, logit_fit_acc, clusters [{freq, neurons, share}],
        phase_evidence {boundaries, changes}, n_checkpoints, timing_seconds;
        mlp_fve, mlp_fve_std, mlp_fve_components [{freq, kind, fve}] (Section 4.2, Table 5),
        mlp_ablations and skip_ablations [{name, loss, acc, test_loss, test_acc}] (Section 4.4,
        Table 6), mlp_ablations_cleanup_end {step, epoch, rows} (the same ablations at the
        checkpoint that ends cleanup; null without a cleanup phase), key_rule_name,
        key_frequencies_wl, key_frequencies_neurons,
        wl_frequency_shares, neuron_fve_all_freqs(_mean), gini_W_E_rows, gini_W_L_rows, embed_frequencies,
        gini_neurons (the Gini over MLP neurons of what each sends to the logits: sparsity in the
        neuron basis, beside the Fourier basis's gini_W_E/gini_W_L),
        phases_test_loss and phase_rule_test_loss (the cleanup ended by test loss instead).
        With --llc: llc, llc_std, llc_r_hat, llc_drift (at the analysed checkpoint), llc_diverged
        [steps whose chains diverged], llc_settings {epsilon, gamma, nbeta (resolved), chains,
        burnin, draws, batches, seed, n, method}, timing_seconds.llc.
        Attention-only runs: neuron_fve, mlp_fve, gini_W_L, gini_neurons, wl_residual are null.
    RUN/metrics.sqlite, table "progress": one row per checkpoint, columns
        step, epoch, train_loss, test_loss, train_acc, test_acc, restricted_loss,
        restricted_loss_train, restricted_loss_test, restricted_acc, excluded_loss,
        excluded_loss_k{K} (each key frequency alone), excluded_loss_max and
        excluded_loss_max_freq (the worst single frequency of all; footnote 3), coef_k{K} (cos(w(a+b-c)) coefficient),
        gini_W_E, gini_W_L, weight_norm (sum of squared weights); also restricted_acc_train,
        restricted_acc_test, excluded_acc, and with --per-checkpoint-keys a text column
        key_frequencies ("14,35,...") naming the K used for that row.
    RUN/metrics.sqlite, table "llc" (--llc): one row per checkpoint, columns step, epoch, llc,
        llc_std, llc_init_loss (L_n(w*)), llc_r_hat, llc_drift, llc_chain{c} (each chain's estimate).
    RUN/analysis/llc_traces.safetensors (--llc): steps [k] int64, trace [k, chains, burnin + draws]
        float64 (the minibatch loss at every SGLD step).
    RUN/analysis/figures.safetensors: arrays for the final checkpoint's figures:
        embed_spectrum [p] (norm per Fourier basis row), wl_spectrum [p],
        logit_fourier_norm [p, p] (2D Fourier norms of the logits over (a, b)),
        attention [n_heads, p, p] (attention from `=` to `a`), neuron_ids [n],
        neuron_acts [n, p, p], neuron_fourier [n, p, p], neuron_fve [d_mlp], neuron_freq [d_mlp],
        cluster_wl_fourier [p, m] (W_L columns of the largest cluster, in the Fourier basis),
        cluster_freq [] (that cluster's frequency). Floats are float32, ids int64. Attention-only
        runs have no wl_spectrum, neuron_* or cluster_* arrays; cluster_* is absent when no
        neuron is explained by one frequency.
"""
