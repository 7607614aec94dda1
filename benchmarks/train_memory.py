"""Peak memory of mainline training: a real `grokscope train` run in a child process, its
maximum resident set size read back from the kernel, against a straightforward loop's.

    python benchmarks/train_memory.py [--epochs 300] [--threads 2]

Both children import torch and train the mainline for the same number of epochs; the figure is
ru_maxrss of each child (what `/usr/bin/time -v` calls "Maximum resident set size").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

BASELINE = """
import torch, sys
sys.argv = ['x']
from grokscope import config as C
from grokscope.tasks import make_task
from grokscope.models.reference import ReferenceTransformer, reference_loss
torch.set_num_threads({threads})
t = make_task(C.resolve({{}}))
m = ReferenceTransformer(t.d_vocab, t.d_vocab_out, t.n_ctx)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0)
for _ in range({epochs}):
    opt.zero_grad(); reference_loss(m(t.train_x)[:, -1], t.train_y[:, 0]).backward(); opt.step()
"""


REPORT = "\nimport resource, sys\nprint('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"


def child_peak_mb(code: str) -> float:
    """Run `code` in a fresh interpreter and return its own peak RSS in MiB."""
    res = subprocess.run([sys.executable, "-c", code + REPORT], check=True, capture_output=True, text=True)
    line = [x for x in res.stderr.splitlines() if x.startswith("PEAK_KIB")][-1]
    return int(line.split()[1]) / 1024


def cli_code(argv: list[str]) -> str:
    return f"import sys\nfrom grokscope.cli import app\napp({argv!r}, standalone_mode=False)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = child_peak_mb(cli_code(["train", "mainline", "--out", f"{tmp}/run", "-q", "--set",
                                       f"train.epochs={args.epochs}", "--set", f"train.threads={args.threads}"]))
    base = child_peak_mb(BASELINE.format(threads=args.threads, epochs=args.epochs))
    print(f"peak RSS, grokscope train (mainline, {args.epochs} epochs, with eval and checkpoints): {ours:.0f} MiB")
    print(f"peak RSS, straightforward loop (same epochs, no eval):                      {base:.0f} MiB")
    print(f"target: under 1024 MiB -> {'met' if ours < 1024 else 'NOT met'}")


if __name__ == "__main__":
    main()
