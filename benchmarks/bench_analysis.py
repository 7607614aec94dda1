"""Cost of the progress measures against a straightforward baseline, in the same process.

    PYTHONPATH=src python benchmarks/bench_analysis.py [--p 113] [--keys 14,35,41,42,52]

Baseline: build the p^3 cube of cos(w_k(a+b-c)) terms for every key frequency and solve the
least-squares fit on it, and form P_K as a dense p^2 x p^2 matrix for restricted/excluded
logits. Ours (fourier.cos_abc_coefficients, fourier.project): thin matmuls with U [p^2, 2|K|],
no cube and no P_K. Prints seconds, peak extra memory of each, and the ratio.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from grokscope.analysis import fourier as fr


def baseline(L: torch.Tensor, p: int, ks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.stack([fr.cos_abc_term(p, k).flatten() for k in ks], dim=1)  # [p^3, |K|]
    coefs = torch.linalg.lstsq(X, L.flatten()[:, None]).solution.flatten()
    U = fr.sum_directions(p, ks)
    P = U @ U.T  # dense [p^2, p^2]
    return coefs, P @ L


def ours(L: torch.Tensor, p: int, ks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    U = fr.sum_directions(p, ks)
    return fr.cos_abc_coefficients(L, p, ks), fr.project(L, U)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn, *args) -> tuple[float, float, tuple]:
    """Seconds and growth of the process's peak RSS (MiB); run the lighter function first."""
    before = peak_mib()
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, peak_mib() - before, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--p", type=int, default=113)
    ap.add_argument("--keys", default="14,35,41,42,52")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p, ks = args.p, [int(k) for k in args.keys.split(",")]
    L = torch.randn(p * p, p, dtype=torch.float64)
    to, mo, (co, po) = measure(ours, L, p, ks)  # first: the peak RSS only grows
    tb, mb, (cb, pb) = measure(baseline, L, p, ks)
    assert torch.allclose(cb, co, atol=1e-8) and torch.allclose(pb, po, atol=1e-8)
    print(f"p={p} K={ks}: baseline {tb:.2f} s, {mb:.0f} MiB; ours {to:.3f} s, {mo:.0f} MiB; "
          f"speed-up {tb / to:.0f}x")


if __name__ == "__main__":
    main()
