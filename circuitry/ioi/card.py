"""The measurements on the IOI model card (`circuitry/builtin/ioi-toy/card.json`), from one function.

`python -m circuitry.ioi.card [MODEL]` prints them as JSON (MODEL defaults to
builtin:ioi-toy). Every set of prompts is the fixed held-out set of
`circuitry.ioi.measure.held_out`: name pairs never seen together in training.
"""

from __future__ import annotations

import sys

from circuitry.ioi.language import position_spread
from circuitry.ioi.measure import evaluate, head_table, held_out, s1_replaced
from circuitry.jsonable import strict_dumps
from circuitry.model import HookedTransformer

HEAD_PROMPTS = 300


def card_measurements(model: HookedTransformer) -> dict:
    """Scores per template set, with and without filler prefixes and with S1 replaced by a third name, the
    position spread of the classic prompts, and the per-head table on the classic prompts."""
    scores = {}
    for templates in ("classic", "mixed", "any-order"):
        prompts = held_out(templates=templates)
        scores[templates] = evaluate(model, prompts).as_dict()
        scores[f"{templates}_without_prefix"] = evaluate(model, held_out(max_prefix=0, templates=templates)).as_dict()
        scores[f"{templates}_s1_replaced"] = evaluate(model, s1_replaced(prompts)).as_dict()
    heads = head_table(model, held_out(HEAD_PROMPTS, templates="classic"))
    return {"scores": scores, "position_spread": position_spread(held_out(templates="classic")),
            "heads": {row.head: {k: v for k, v in row.as_dict().items() if k != "head"} for row in heads}}


def main(argv: list[str]) -> int:
    import torch

    from circuitry.sources import load_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_model(argv[0] if argv else "builtin:ioi-toy")
    print(strict_dumps(card_measurements(model), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
