"""Contrastive tasks: paired clean and corrupted prompts, answers, named positions.

`ContrastiveBatch` (batch.py) is the data every task becomes; task files in
YAML (`kind: Task`) and task plugins produce it.
"""

from circuitry.tasks.batch import END, ContrastiveBatch, split_offset

__all__ = ["END", "ContrastiveBatch", "split_offset"]
