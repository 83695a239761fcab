"""Labels that split an evaluation's samples: dataset category, and the demo's expression type.

Every metrics file holds, beside the overall numbers, the same metrics per category (the
dataset's category names) and, for the generated demo, per expression template (attribute,
extreme, relation; read back from the sentence, see ``expression_template``).
"""

from __future__ import annotations

from collections.abc import Iterable

from rsis.data.demo.grammar import EXTREMES
from rsis.data.refer import Refer

DEMO_DATASET = "demo"


def expression_template(sentence: str) -> str:
    """The demo template that wrote ``sentence``.

    The generator's three templates read apart: ``attribute`` is "the <noun phrase>",
    ``extreme`` is "the <extreme word> <noun phrase>", and ``relation`` is "<noun phrase>
    <relation> the <landmark>" (the only one not starting with "the").
    """
    words = sentence.split()
    if not words or words[0] != "the":
        return "relation"
    return "extreme" if len(words) > 1 and words[1] in EXTREMES else "attribute"


def sample_labels(refer: Refer, sent_ids: Iterable[int]) -> dict[str, dict[int, str]]:
    """Breakdown name -> (sent_id -> label) for the samples ``sent_ids`` of ``refer``.

    ``category`` for every dataset; ``expression_type`` for the demo dataset only.
    """
    index = {s["sent_id"]: (ref, s["sent"]) for ref in refer.refs for s in ref["sentences"]}
    chosen = {sent_id: index[sent_id] for sent_id in sent_ids}
    groups = {
        "category": {sid: refer.categories[ref["category_id"]] for sid, (ref, _) in chosen.items()}
    }
    if refer.dataset == DEMO_DATASET:
        groups["expression_type"] = {
            sid: expression_template(text) for sid, (_, text) in chosen.items()
        }
    return groups
