"""Canonical prompts: the sentence whose next token states a fact.

INSERT reads the residual at the install layer on this prompt, DELETE finds the
features that push the target on it, REBALANCE measures the target's
probability on it.  ``PROMPT "<template with {entity}>"`` overrides the table.
"""

from __future__ import annotations

import re

from ..errors import ExecutionError

__all__ = ["TEMPLATES", "PARAPHRASES", "ALIASES", "GENERIC_TEMPLATE", "canonical_prompt", "same_relation",
           "template_for", "paraphrase_templates", "normalise_relation"]

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

#: relation → more ways of asking for it: INSERT keys a fact on these as well as on the
#: canonical template (a feature's gate must fire on each; a KNN fact gets a key for
#: each), so that it answers when asked in other words.  None of them is one of
#: ``benchmarks/data/counterfact_edits.json``'s paraphrases, which measure generalisation
#: to wordings INSERT never saw.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "capital": ("{entity} has its capital in", "The capital of {entity} is the city of",
                "Which city is the capital of {entity}? It is"),
    "language": ("The language of {entity} is", "{entity}'s official language is",
                 "In {entity}, the language people speak is"),
    "currency": ("{entity}'s currency is the", "The currency used in {entity} is the",
                 "Prices in {entity} are given in the"),
    "continent": ("{entity} is a country in", "{entity} lies on the continent of"),
    "country": ("{entity} is a city in", "The country where {entity} is located is"),
    "located-in": ("{entity} can be found in", "{entity} is situated in"),
    "born-in": ("{entity} was born in the city of", "The birthplace of {entity} is"),
    "birthplace": ("{entity} was born in the city of", "The birthplace of {entity} is"),
    "nationality": ("{entity} is a citizen of", "The nationality of {entity} is"),
    "occupation": ("{entity} is a", "By profession, {entity} is a"),
    "profession": ("{entity} is a", "By profession, {entity} is a"),
    "author": ("{entity} is a work by", "The writer of {entity} is", "{entity} was authored by"),
    "director": ("{entity} is a film by", "The director of {entity} is"),
    "founder": ("{entity} was established by", "{entity}'s founder is",
                "The person who founded {entity} is"),
    "ceo": ("{entity} is run by its CEO,", "{entity}'s chief executive is"),
    "sport": ("{entity} plays", "{entity} is known for playing", "The sport played by {entity} is"),
    "instrument": ("{entity} is known for playing the", "The instrument {entity} plays is the"),
    "spouse": ("{entity}'s spouse is", "{entity} is the husband or wife of"),
    "headquarters": ("{entity} is headquartered in", "The head office of {entity} is in"),
    "owner": ("{entity} belongs to", "The owner of {entity} is"),
    "opposite": ("The antonym of {entity} is", "{entity} is the opposite of"),
}

#: relations of the table that are another's under another name (the same question)
ALIASES: dict[str, str] = {"official-language": "language", "birthplace": "born-in",
                           "profession": "occupation", "colour": "color"}

#: used for any relation the table does not know
GENERIC_TEMPLATE = "The {relation} of {entity} is"


def normalise_relation(relation: str) -> str:
    return re.sub(r"[\s_]+", "-", relation.strip().lower())


def same_relation(relation: str) -> str:
    """``relation`` normalised, an alias (:data:`ALIASES`) replaced by its main name."""
    rel = normalise_relation(relation)
    return ALIASES.get(rel, rel)


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


def paraphrase_templates(relation: str, override: str | None = None) -> tuple[str, ...]:
    """The other templates a fact is keyed on (:data:`PARAPHRASES`); none when the
    statement gives a ``PROMPT`` other than the table's own template for the relation,
    or the relation is not in the table."""
    rel = normalise_relation(relation)
    if override is not None and override != TEMPLATES.get(rel):
        return ()
    return PARAPHRASES.get(rel, ())
