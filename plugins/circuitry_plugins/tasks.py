"""Standard discovery tasks: what data a circuit is found on and which metric it must preserve.

- induction: BOS + 10 random tokens repeated twice (64 sequences, seed 1),
  loss on the repeated half (the positions whose next token can be copied
  from context). Short sequences: the small trained models attend to the
  previous token reliably only in the first ~23 positions.
"""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.records import Task


@hookimpl
def circuitry_tasks():
    return [
        Task("induction", "repeated random tokens; loss on the repeats (in-context copying)",
             dataset="repeated", metric="loss",
             dataset_params={"batch": 64, "seq_len": 10, "n_repeats": 2, "seed": 1}),
    ]
