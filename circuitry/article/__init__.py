"""The reproduction of "Induction Heads and In-Context Learning" (docs/induction-heads.md).

`reproduce(out_dir, seeds=(0, 1, 2), steps=None, quick=False) -> Reproduction` trains the runs
(`runs`), tests each claim (`claims`: the trained models; `dynamics`: the training curves) and writes
one self-contained page (`page`) and strict JSON; `circuitry article` runs it from the command line.
"""

from circuitry.article.records import ClaimResult, Number, Reproduction
from circuitry.article.reproduce import reproduce

__all__ = ["ClaimResult", "Number", "Reproduction", "reproduce"]
