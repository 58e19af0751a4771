"""Canonical prompts: the sentence whose next token states a fact.

INSERT reads the residual at the install layer on this prompt, DELETE finds the
features that push the target on it, REBALANCE measures the target's
probability on it.  ``PROMPT "<template with {entity}>"`` overrides the table.
"""

from __future__ import annotations

import re

from ..errors import ExecutionError

__all__ = ["TEMPLATES", "GENERIC_TEMPLATE", "canonical_prompt", "template_for",
           "normalise_relation"]

#: relation (normalised: lower case, ``-`` between words) → template
TEMPLATES: dict[str, str] = {
    "capital": "The capital of {entity} is",
    "capital-of": "{entity} is the capital of",
    "language": "The official language of {entity} is",
    "official-language": "The official language of {entity} is",
    "currency": "The currency of {entity} is the",
    "continent": "{entity} is located on the continent of",
    "country": "{entity} is a city in the country of",
    "located-in": "{entity} is located in",
    "lives-in": "{entity} lives in",
    "born-in": "{entity} was born in",
    "birthplace": "{entity} was born in",
    "nationality": "{entity} has the nationality of",
    "occupation": "{entity} works as a",
    "profession": "{entity} works as a",
    "author": "{entity} was written by",
    "director": "{entity} was directed by",
    "founder": "{entity} was founded by",
    "ceo": "The CEO of {entity} is",
    "leader": "The leader of {entity} is",
    "president": "The president of {entity} is",
    "color": "The color of {entity} is",
    "colour": "The colour of {entity} is",
    "sport": "{entity} plays the sport of",
    "instrument": "{entity} plays the",
    "genre": "{entity} is a work in the genre of",
    "spouse": "{entity} is married to",
    "headquarters": "The headquarters of {entity} are in",
    "owner": "{entity} is owned by",
    "species": "{entity} is a species of",
    "opposite": "The opposite of {entity} is",
}

#: used for any relation the table does not know
GENERIC_TEMPLATE = "The {relation} of {entity} is"


def normalise_relation(relation: str) -> str:
    return re.sub(r"[\s_]+", "-", relation.strip().lower())


def template_for(relation: str, override: str | None = None) -> str:
    if override is not None:
        if "{entity}" not in override:
            raise ExecutionError('PROMPT must contain "{entity}" where the entity goes, '
                                 'e.g. PROMPT "The capital of {entity} is"')
        return override
    return TEMPLATES.get(normalise_relation(relation),
                         GENERIC_TEMPLATE.replace("{relation}",
                                                  normalise_relation(relation).replace("-", " ")))


def canonical_prompt(entity: str, relation: str, override: str | None = None) -> str:
    """The fact's canonical prompt (``{entity}`` filled in; ``{relation}`` too if present)."""
    t = template_for(relation, override)
    return t.replace("{relation}", relation).replace("{entity}", entity)
