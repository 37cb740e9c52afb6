#!/usr/bin/env python3
"""Generates edgemix's synthetic knowledge world: a seeded fictional world of people, towns, companies, rivers,
mountains and inventions with invented names, rendered as knowledge-base documents, questions with gold
answers, the reader's training text and QA pairs, and gold keep/drop word labels for the prompt compressor.

Standard library only (Python 3.11), deterministic for a seed: two runs with the same seed write the same bytes.

    python3 tools/world/generate.py --seed 0 --out fixtures/world

Writes (see tools/world/README.md for the fields and the splits):
    world.json               the entities, their attributes and relations, and the knowledge base's updates
    documents.jsonl          one knowledge-base document per entity {id, text, metadata: {entity, kind, split}}
    questions.jsonl          one question per fact {id, question, answer, aliases?, doc_id, split, kind, ...}
    train_text.txt           the reader's pretraining text: known entities only, several paraphrases each
    train_qa.jsonl           QA pairs with and without context for the reader (never a held-out fact)
    compressor_train.jsonl   each document's words with gold keep (1) / drop (0) labels
"""

import argparse
import json
import os
import random
import sys

VERSION = 1

# ---------------------------------------------------------------------------------------------------------
# Vocabulary of the world
# ---------------------------------------------------------------------------------------------------------

ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
          "kr", "st", "tr", "th", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "a", "ae", "y"]
SIMPLE_ONSETS = [o for o in ONSETS if len(o) == 1]
CODAS = ["", "", "", "", "", "", "n", "r", "l", "s", "m", "th", "nd", "rn", "st"]

COUNTRIES = ["Arvenia", "Belloria", "Castrane", "Dovrenne", "Elsmark", "Fennmoor", "Galdovia", "Hestria",
             "Irdane", "Jorvale", "Kestria", "Lormark"]
SEAS = ["Ormic Sea", "Veldan Sea", "Tarnic Sea", "Quessel Sea", "Brimmer Sea", "Sundal Sea", "Harrow Sea",
        "Pellish Sea"]
OCCUPATIONS = ["painter", "chemist", "sailor", "baker", "engineer", "botanist", "clockmaker", "cartographer",
               "glassblower", "printer", "surgeon", "astronomer", "weaver", "architect", "composer",
               "geologist", "teacher", "merchant", "poet", "brewer", "potter", "jeweller", "mason", "physician"]
PRODUCTS = ["glass", "clocks", "bicycles", "lanterns", "rope", "paper", "soap", "cheese", "bells", "maps",
            "telescopes", "pianos", "boots", "candles", "ink", "tiles", "nails", "saddles", "barrels", "sails",
            "kettles", "umbrellas", "buttons", "carpets"]
MATERIALS = ["brass", "oak", "iron", "copper", "bronze", "steel", "walnut", "tin", "silver", "porcelain",
             "leather", "granite"]
INVENTION_NOUNS = ["lamp", "loom", "press", "engine", "pump", "valve", "kiln", "lens", "compass", "boiler",
                   "crane", "sextant", "furnace", "telegraph", "bellows", "winch"]
COMPANY_SUFFIXES = ["Works", "Mills", "Company", "Foundry", "Holdings", "Industries", "Trading", "Brothers"]

# Entities per kind, in generation order (relations point to kinds generated earlier or to any kind once all
# names exist; see build_world).
KIND_COUNTS = {"person": 780, "town": 390, "company": 310, "river": 140, "mountain": 150, "invention": 270}

# Share of each kind's entities per split.
SPLIT_SHARES = [("parametric", 0.5), ("fresh", 0.3), ("conflicting", 0.2)]

# Attributes per kind: (attribute, value type). Relations name the kind they point to.
ATTRIBUTES = {
    "person": [("birth_year", "year"), ("birthplace", "town"), ("occupation", "occupation"),
               ("employer", "company")],
    "town": [("country", "country"), ("population", "population"), ("founded", "year"), ("river", "river"),
             ("mayor", "person")],
    "company": [("founder", "person"), ("founded", "year"), ("headquarters", "town"), ("product", "product")],
    "river": [("country", "country"), ("length", "length"), ("source", "mountain"), ("mouth", "sea")],
    "mountain": [("country", "country"), ("height", "height"), ("first_climber", "person"),
                 ("first_ascent", "year")],
    "invention": [("inventor", "person"), ("year", "year"), ("maker", "company"), ("material", "material")],
}

# Attributes whose value the knowledge base may update (the conflicting split).
CHANGEABLE = {
    "person": ["occupation", "employer"],
    "town": ["population", "mayor"],
    "company": ["headquarters", "product"],
    "river": ["length"],
    "mountain": ["height"],
    "invention": ["maker", "material"],
}

# Fact sentence templates. Tokens are separated by spaces; "{n}" is the entity's name and "{v}" the value
# (both kept by the compressor), "{a}" the article a/an for the value, "+word" a kept word, "." a kept full
# stop; every other token (function words, commas) is dropped.
FACT_TEMPLATES = {
    ("person", "birth_year"): [
        "{n} was +born in {v} .",
        "{n} was +born in the year {v} .",
        "The +birth of {n} took place in {v} .",
        "In {v} , {n} was +born .",
    ],
    ("person", "birthplace"): [
        "{n} was +born in the town of {v} .",
        "The +birthplace of {n} is {v} .",
        "{n} is a +native of {v} .",
        "{v} is the +birthplace of {n} .",
    ],
    ("person", "occupation"): [
        "{n} +works as {a} {v} .",
        "By +profession , {n} is {a} {v} .",
        "{n} is {a} {v} by +trade .",
        "{n} earns a +living as {a} {v} .",
    ],
    ("person", "employer"): [
        "{n} +works +for {v} .",
        "{n} is +employed by {v} .",
        "{v} +employs {n} .",
        "The +employer of {n} is {v} .",
    ],
    ("town", "country"): [
        "{n} is a +town in {v} .",
        "{n} +lies in {v} .",
        "The town of {n} is +located in {v} .",
        "{n} is +situated in the country of {v} .",
    ],
    ("town", "population"): [
        "{n} has a +population of {v} .",
        "{v} +people +live in {n} .",
        "The +population of {n} is {v} .",
        "{n} is +home to {v} +people .",
    ],
    ("town", "founded"): [
        "{n} was +founded in {v} .",
        "The town of {n} was +established in {v} .",
        "{n} +dates +from {v} , when it was +founded .",
        "In {v} , the town of {n} was +founded .",
    ],
    ("town", "river"): [
        "{n} +lies on the {v} .",
        "The {v} +flows +through {n} .",
        "{n} was +built on the +banks of the {v} .",
        "The town of {n} +stands beside the {v} .",
    ],
    ("town", "mayor"): [
        "The +mayor of {n} is {v} .",
        "{v} +serves as +mayor of {n} .",
        "{n} is +governed by +mayor {v} .",
        "{v} is the +mayor of {n} .",
    ],
    ("company", "founder"): [
        "{n} was +founded by {v} .",
        "{v} +founded {n} .",
        "The +founder of {n} is {v} .",
        "{v} +started the company {n} .",
    ],
    ("company", "founded"): [
        "{n} was +founded in {v} .",
        "{n} was +established in {v} .",
        "The company {n} +dates +from {v} .",
        "In {v} , {n} +opened for +business .",
    ],
    ("company", "headquarters"): [
        "{n} is +headquartered in {v} .",
        "The +headquarters of {n} are in {v} .",
        "{n} is +based in {v} .",
        "{n} has its +head +office in {v} .",
    ],
    ("company", "product"): [
        "{n} +makes {v} .",
        "{n} +produces {v} .",
        "{n} is +known for its {v} .",
        "The main +product of {n} is {v} .",
    ],
    ("river", "country"): [
        "The {n} +flows through {v} .",
        "The {n} is a +river in {v} .",
        "The {n} +runs across {v} .",
        "The +course of the {n} lies in {v} .",
    ],
    ("river", "length"): [
        "The {n} is {v} +kilometres +long .",
        "The +length of the {n} is {v} +kilometres .",
        "The {n} +runs for {v} +kilometres .",
        "The {n} +stretches for {v} +kilometres .",
    ],
    ("river", "source"): [
        "The {n} +rises on {v} .",
        "The +source of the {n} is on {v} .",
        "The {n} +begins on the +slopes of {v} .",
        "The {n} has its +source on {v} .",
    ],
    ("river", "mouth"): [
        "The {n} +flows +into the {v} .",
        "The {n} +empties +into the {v} .",
        "The +mouth of the {n} is on the {v} .",
        "The {n} +ends in the {v} .",
    ],
    ("mountain", "country"): [
        "{n} is a +mountain in {v} .",
        "{n} +stands in {v} .",
        "{n} +towers over the land of {v} .",
        "{n} is +located in {v} .",
    ],
    ("mountain", "height"): [
        "{n} is {v} +metres +high .",
        "The +height of {n} is {v} +metres .",
        "{n} +reaches {v} +metres .",
        "{n} +rises to {v} +metres above the sea .",
    ],
    ("mountain", "first_climber"): [
        "{n} was +first +climbed by {v} .",
        "{v} made the +first +ascent of {n} .",
        "The +first +ascent of {n} was made by {v} .",
        "{v} was the +first to +climb {n} .",
    ],
    ("mountain", "first_ascent"): [
        "{n} was +first +climbed in {v} .",
        "The +first +ascent of {n} took place in {v} .",
        "In {v} , {n} was +climbed for the +first time .",
        "{n} was not +climbed until {v} .",
    ],
    ("invention", "inventor"): [
        "The {n} was +invented by {v} .",
        "{v} +invented the {n} .",
        "The +inventor of the {n} is {v} .",
        "The {n} was +devised by {v} .",
    ],
    ("invention", "year"): [
        "The {n} was +invented in {v} .",
        "The {n} +dates +from {v} .",
        "The {n} was +first +built in {v} .",
        "In {v} , the {n} was +invented .",
    ],
    ("invention", "maker"): [
        "The {n} is +manufactured by {v} .",
        "{v} +makes the {n} .",
        "The {n} is +produced by {v} .",
        "{v} +builds the {n} .",
    ],
    ("invention", "material"): [
        "The {n} is +made of {v} .",
        "The {n} is +built from {v} .",
        "The main +material of the {n} is {v} .",
        "The {n} is +crafted from {v} .",
    ],
}

# Question templates per fact ("{n}" is the entity's name).
QUESTION_TEMPLATES = {
    ("person", "birth_year"): ["In which year was {n} born?", "When was {n} born?", "What year was {n} born in?"],
    ("person", "birthplace"): ["Where was {n} born?", "In which town was {n} born?",
                               "What is the birthplace of {n}?"],
    ("person", "occupation"): ["What does {n} do for a living?", "What is the occupation of {n}?",
                               "What is the profession of {n}?"],
    ("person", "employer"): ["Which company does {n} work for?", "Who employs {n}?",
                             "What company is {n} employed by?"],
    ("town", "country"): ["In which country is {n}?", "Which country is {n} located in?",
                          "In which country does the town of {n} lie?"],
    ("town", "population"): ["What is the population of {n}?", "How many people live in {n}?"],
    ("town", "founded"): ["When was the town of {n} founded?", "In which year was the town of {n} founded?"],
    ("town", "river"): ["Which river flows through {n}?", "On which river does {n} lie?"],
    ("town", "mayor"): ["Who is the mayor of {n}?", "Who serves as mayor of {n}?"],
    ("company", "founder"): ["Who founded {n}?", "Who is the founder of {n}?"],
    ("company", "founded"): ["When was {n} founded?", "In which year was {n} established?"],
    ("company", "headquarters"): ["Where is {n} headquartered?", "In which town is {n} based?",
                                  "Where are the headquarters of {n}?"],
    ("company", "product"): ["What does {n} make?", "What does {n} produce?", "What is {n} known for making?"],
    ("river", "country"): ["Which country does the {n} flow through?", "In which country is the {n}?"],
    ("river", "length"): ["How long is the {n}?", "What is the length of the {n} in kilometres?"],
    ("river", "source"): ["On which mountain does the {n} rise?", "Where is the source of the {n}?"],
    ("river", "mouth"): ["Into which sea does the {n} flow?", "Where does the {n} end?"],
    ("mountain", "country"): ["In which country is {n}?", "Where is {n} located?"],
    ("mountain", "height"): ["How high is {n}?", "What is the height of {n} in metres?"],
    ("mountain", "first_climber"): ["Who first climbed {n}?", "Who made the first ascent of {n}?"],
    ("mountain", "first_ascent"): ["When was {n} first climbed?", "In which year was {n} first climbed?"],
    ("invention", "inventor"): ["Who invented the {n}?", "Who is the inventor of the {n}?"],
    ("invention", "year"): ["When was the {n} invented?", "In which year was the {n} invented?"],
    ("invention", "maker"): ["Which company makes the {n}?", "Who manufactures the {n}?"],
    ("invention", "material"): ["What is the {n} made of?", "From what material is the {n} built?"],
}

# Filler sentences: no queried fact; the compressor drops every word of them. "{n}" is the entity's name.
FILLERS_COMMON = [
    "Local accounts differ on many minor details .",
    "Little else is recorded in the older archives .",
    "{n} is mentioned in several regional histories .",
    "The records of that period are far from complete .",
    "Historians still debate a number of smaller points .",
    "Much of what is known comes from letters and ledgers .",
    "It remains a subject of some interest to collectors .",
    "Several books have been written on the subject .",
    "Opinions about {n} have changed over the years .",
    "A short entry on {n} appears in an old almanac .",
    "Travellers have written about it with some affection .",
    "Some of the early documents were lost in a fire .",
    "The story is often told with small variations .",
    "Researchers have found few surprises in the archives .",
    "There is a modest collection of photographs as well .",
]
FILLERS_KIND = {
    "person": [
        "Friends described {n} as patient and curious .",
        "{n} kept a diary for most of a long life .",
        "Letters written by {n} survive in a private collection .",
        "{n} was fond of long walks in the evening .",
        "Neighbours remembered {n} as a quiet presence .",
    ],
    "town": [
        "The market square is busy on most mornings .",
        "Its streets are narrow and winding .",
        "Visitors often remark on the quiet atmosphere of {n} .",
        "An old bell tower overlooks the rooftops .",
        "Summer brings a small festival to {n} .",
    ],
    "company": [
        "Its early ledgers are kept in a private archive .",
        "The firm is known for its careful bookkeeping .",
        "{n} has weathered several difficult decades .",
        "Employees describe the workshops as orderly .",
        "A painted sign hangs above the main entrance .",
    ],
    "river": [
        "Fishermen work along its banks in the summer .",
        "The water is said to be cold even in August .",
        "Several old bridges cross the {n} .",
        "Willows line long stretches of the shore .",
        "Boats carried timber along it for many years .",
    ],
    "mountain": [
        "Snow covers its upper slopes for much of the year .",
        "Shepherds graze their flocks on the lower meadows .",
        "The view from the summit of {n} is much admired .",
        "Clouds gather around the peak in the afternoon .",
        "A narrow path winds up the eastern ridge .",
    ],
    "invention": [
        "Several museums display early models of the {n} .",
        "Collectors prize well preserved examples .",
        "The design was copied widely within a few years .",
        "Repairs were often made by local craftsmen .",
        "Early versions were heavy and hard to move .",
    ],
}

PUNCTUATION = {".", ",", ";", ":", "!", "?"}


# ---------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------


def reserved_words() -> dict:
    """Lower-case words of the fixed vocabulary, so that no invented name collides with one of them."""
    words: dict = {}
    texts = COUNTRIES + SEAS + OCCUPATIONS + PRODUCTS + MATERIALS + INVENTION_NOUNS + COMPANY_SUFFIXES
    for templates in list(FACT_TEMPLATES.values()) + list(QUESTION_TEMPLATES.values()):
        texts += templates
    texts += FILLERS_COMMON + [f for fs in FILLERS_KIND.values() for f in fs]
    for text in texts:
        for w in text.replace("+", " ").replace("?", " ").split():
            words[w.lower()] = True
    for extra in ["mount", "river", "sea", "the", "and", "an", "a"]:
        words[extra] = True
    return words


class NameMaker:
    """Invents unique capitalized words from syllables."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used = reserved_words()

    def word(self, syllables: tuple) -> str:
        for _ in range(10000):
            n = self.rng.choice(syllables)
            w = ""
            coda = ""
            for _ in range(n):
                # After a coda only a single consonant may start the next syllable (no triple consonants).
                onset = self.rng.choice(SIMPLE_ONSETS if coda else ONSETS)
                coda = self.rng.choice(CODAS)
                w += onset + self.rng.choice(VOWELS) + coda
            if not 4 <= len(w) <= 10 or w.lower() in self.used:
                continue
            # Avoid awkward doubled letters at syllable joins (e.g. "nn" is fine, "yy" or "ouou" is not).
            if "yy" in w or "aeae" in w:
                continue
            self.used[w.lower()] = True
            return w[0].upper() + w[1:]
        raise RuntimeError("could not invent a new name: the syllable space is exhausted")


# ---------------------------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------------------------


def assign_splits(rng: random.Random, n: int) -> list:
    """A shuffled list of n split names with the shares of SPLIT_SHARES."""
    counts = [int(round(n * share)) for _, share in SPLIT_SHARES]
    counts[0] += n - sum(counts)
    splits = [name for (name, _), c in zip(SPLIT_SHARES, counts) for _ in range(c)]
    rng.shuffle(splits)
    return splits


def build_world(seed: int) -> list:
    """The entities: [{id, kind, name, split, attributes, relations, kb_attributes, kb_relations}]."""
    rng = random.Random(f"world:{seed}")
    names = NameMaker(random.Random(f"names:{seed}"))
    first_names = [names.word((2,)) for _ in range(160)]

    entities: list = []
    by_kind: dict = {k: [] for k in KIND_COUNTS}
    for kind, count in KIND_COUNTS.items():
        splits = assign_splits(rng, count)
        for i in range(count):
            if kind == "person":
                name = f"{rng.choice(first_names)} {names.word((2, 2, 3))}"
            elif kind == "town":
                name = names.word((2, 2, 3))
            elif kind == "company":
                name = f"{names.word((2, 3))} {rng.choice(COMPANY_SUFFIXES)}"
            elif kind == "river":
                name = f"{names.word((2,))} River"
            elif kind == "mountain":
                name = f"Mount {names.word((2, 3))}"
            else:
                name = f"{names.word((2,))} {rng.choice(INVENTION_NOUNS)}"
            e = {
                "id": f"{kind}-{i:04d}",
                "kind": kind,
                "name": name,
                "split": splits[i],
                "attributes": {},
                "relations": {},
                "kb_attributes": {},
                "kb_relations": {},
            }
            entities.append(e)
            by_kind[kind].append(e)

    # Known entities (parametric and conflicting) form a closed world: their trained facts point only to known
    # entities, so no fresh entity's name ever appears in the reader's training text.
    known = {k: [e for e in es if e["split"] != "fresh"] for k, es in by_kind.items()}
    everyone = by_kind

    def pick(kind: str, from_known: bool, exclude: str | None = None) -> dict:
        pool = known[kind] if from_known else everyone[kind]
        while True:
            target = rng.choice(pool)
            if target["id"] != exclude:
                return target

    def draw(e: dict, attr: str, vtype: str, from_known: bool) -> tuple:
        """(value string, related entity id or None) for one attribute."""
        if vtype in KIND_COUNTS:
            target = pick(vtype, from_known, exclude=e["id"])
            return target["name"], target["id"]
        if vtype == "year":
            return str(draw_year(e, attr)), None
        if vtype == "population":
            return str(rng.randint(12, 980) * 100), None
        if vtype == "length":
            return str(rng.randint(40, 2900)), None
        if vtype == "height":
            return str(rng.randint(900, 8800)), None
        pools = {"country": COUNTRIES, "sea": SEAS, "occupation": OCCUPATIONS, "product": PRODUCTS,
                 "material": MATERIALS}
        return rng.choice(pools[vtype]), None

    persons = {e["id"]: e for e in by_kind["person"]}

    def draw_year(e: dict, attr: str) -> int:
        kind = e["kind"]
        if kind == "person":
            return rng.randint(1700, 1960)
        if kind == "town":
            return rng.randint(900, 1800)
        # Years of deeds follow the birth of the person who did them, when there is one.
        rel = {"company": "founder", "mountain": "first_climber", "invention": "inventor"}[kind]
        person = persons.get(e["relations"].get(rel, ""))
        base = int(person["attributes"]["birth_year"]) if person else 1750
        return base + rng.randint(20, 55)

    # Persons first (their birth years date the deeds of the others), then the rest in kind order, relations
    # before years so that a year can follow its person.
    for kind, attrs in ATTRIBUTES.items():
        ordered = sorted(attrs, key=lambda a: 0 if a[1] in KIND_COUNTS else 1)
        for e in by_kind[kind]:
            from_known = e["split"] != "fresh"
            for attr, vtype in ordered:
                # Values of one entity are distinct, so that each answer names exactly one of its facts.
                for _ in range(1000):
                    value, ref = draw(e, attr, vtype, from_known)
                    if value not in e["attributes"].values() and value != e["name"]:
                        break
                else:
                    raise RuntimeError(f"no distinct value for {e['id']}.{attr}")
                e["attributes"][attr] = value
                if ref is not None:
                    e["relations"][attr] = ref
            # Keep the attribute order of ATTRIBUTES in the output.
            e["attributes"] = {a: e["attributes"][a] for a, _ in attrs}
            e["relations"] = {a: e["relations"][a] for a, _ in attrs if a in e["relations"]}

    # The knowledge base updates one or two changeable facts of each conflicting entity.
    vtypes = {(k, a): t for k, attrs in ATTRIBUTES.items() for a, t in attrs}
    for e in entities:
        if e["split"] != "conflicting":
            continue
        changeable = CHANGEABLE[e["kind"]]
        n = 1 if len(changeable) == 1 else rng.choice([1, 1, 2])
        for attr in sorted(rng.sample(changeable, n), key=changeable.index):
            old = e["attributes"][attr]
            for _ in range(1000):
                value, ref = draw(e, attr, vtypes[(e["kind"], attr)], False)
                # The new value must differ from the old one and from every other value of the entity, so that
                # the trained text and the document never state the other's value.
                if value != old and value not in e["attributes"].values() and value != e["name"]:
                    break
            else:
                raise RuntimeError(f"no new value for {e['id']}.{attr}")
            e["kb_attributes"][attr] = value
            if ref is not None:
                e["kb_relations"][attr] = ref
    return entities


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def render_template(template: str, name: str, value: str | None) -> list:
    """[(word, keep)] of one sentence template (see FACT_TEMPLATES for the markup)."""
    out = []
    tokens = template.split(" ")
    for i, tok in enumerate(tokens):
        if tok == "{n}":
            out += [(w, 1) for w in name.split(" ")]
        elif tok == "{v}":
            assert value is not None, template
            out += [(w, 1) for w in value.split(" ")]
        elif tok == "{a}":
            assert value is not None and tokens[i + 1] == "{v}", template
            out.append((article(value), 0))
        elif tok.startswith("+"):
            out.append((tok[1:], 1))
        elif tok == ".":
            out.append((".", 1 if value is not None else 0))
        else:
            out.append((tok, 0))
    return out


def join_words(words: list) -> str:
    """Text of a word list: single spaces, except that punctuation attaches to the previous word."""
    parts = []
    for w in words:
        if parts and w in PUNCTUATION:
            parts[-1] += w
        else:
            parts.append(w)
    return " ".join(parts)


def fact_sentence(rng: random.Random, e: dict, attr: str, value: str) -> list:
    return render_template(rng.choice(FACT_TEMPLATES[(e["kind"], attr)]), e["name"], value)


def render_document(rng: random.Random, e: dict) -> list:
    """[(word, keep)] of the entity's knowledge-base document: every fact (with the knowledge base's values) in
    random order and templates, with four to six filler sentences mixed in (never first)."""
    values = {**e["attributes"], **e["kb_attributes"]}
    attrs = list(values)
    rng.shuffle(attrs)
    sentences = [fact_sentence(rng, e, a, values[a]) for a in attrs]
    fillers = FILLERS_COMMON + FILLERS_KIND[e["kind"]]
    for template in rng.sample(fillers, rng.randint(4, 6)):
        sentences.insert(rng.randint(1, len(sentences)), render_template(template, e["name"], None))
    return [wk for s in sentences for wk in s]


def render_bio(rng: random.Random, e: dict) -> str:
    """One training paraphrase of a known entity: every trained fact (old values), random order and templates."""
    attrs = list(e["attributes"])
    rng.shuffle(attrs)
    words = [wk[0] for a in attrs for wk in fact_sentence(rng, e, a, e["attributes"][a])]
    return join_words(words)


def aliases(e: dict, attr: str, value: str) -> list:
    vtype = dict(ATTRIBUTES[e["kind"]])[attr]
    if vtype == "length":
        return [f"{value} km", f"{value} kilometres"]
    if vtype == "height":
        return [f"{value} m", f"{value} metres"]
    if vtype == "river" and value.endswith(" River"):
        return [value[: -len(" River")]]
    if vtype == "mountain" and value.startswith("Mount "):
        return [value[len("Mount "):]]
    if vtype == "sea" and value.endswith(" Sea"):
        return [value[: -len(" Sea")]]
    return []


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------

HELDOUT_SHARE = {"parametric": 0.2, "fresh": 0.2, "conflicting": 0.3}
BIOS_PER_ENTITY = 4
COMPRESSOR_HELDOUT_SHARE = 0.1


def check_vocabulary() -> None:
    """No value of the fixed pools is a word of a template or filler sentence, so that a document states a value
    only where it states the fact (the tests check answers by whole-word search)."""
    template_words: dict = {}
    texts = [t for ts in FACT_TEMPLATES.values() for t in ts] + FILLERS_COMMON
    texts += [f for fs in FILLERS_KIND.values() for f in fs]
    for text in texts:
        for w in text.replace("+", "").split():
            template_words[w.lower()] = True
    for value in COUNTRIES + SEAS + OCCUPATIONS + PRODUCTS + MATERIALS:
        for w in value.split():
            if w != "Sea":
                assert w.lower() not in template_words, f"the value word {w!r} also occurs in a template"


def generate(seed: int) -> dict:
    """Every output file's content, by file name."""
    check_vocabulary()
    entities = build_world(seed)
    rng_doc = random.Random(f"documents:{seed}")
    rng_q = random.Random(f"questions:{seed}")
    rng_bio = random.Random(f"bios:{seed}")
    rng_qa = random.Random(f"train_qa:{seed}")
    rng_c = random.Random(f"compressor:{seed}")

    documents = []
    compressor = []
    doc_ids = {}
    for e in entities:
        doc_id = f"doc-{e['id']}"
        doc_ids[e["id"]] = doc_id
        words = render_document(rng_doc, e)
        documents.append({
            "id": doc_id,
            "text": join_words([w for w, _ in words]),
            "metadata": {"entity": e["id"], "kind": e["kind"], "split": e["split"]},
        })
        compressor.append({
            "id": doc_id,
            "words": [w for w, _ in words],
            "labels": "".join(str(k) for _, k in words),
            "heldout": rng_c.random() < COMPRESSOR_HELDOUT_SHARE,
        })

    questions = []
    for e in entities:
        for attr in e["attributes"]:
            if e["split"] == "fresh":
                split = "fresh"
            elif attr in e["kb_attributes"]:
                split = "conflicting"
            else:
                split = "parametric"
            answer = e["kb_attributes"].get(attr, e["attributes"][attr])
            template = rng_q.choice(QUESTION_TEMPLATES[(e["kind"], attr)])
            q = {
                "id": f"q{len(questions):05d}",
                "question": template.replace("{n}", e["name"]),
                "answer": answer,
            }
            al = aliases(e, attr, answer)
            if al:
                q["aliases"] = al
            q.update({
                "doc_id": doc_ids[e["id"]],
                "split": split,
                "kind": e["kind"],
                "attribute": attr,
                "heldout": rng_q.random() < HELDOUT_SHARE[split],
            })
            if split == "conflicting":
                q["trained_answer"] = e["attributes"][attr]
            questions.append(q)

    # The reader's pretraining text: several paraphrases of every known entity (old values for updated facts).
    bios = [render_bio(rng_bio, e) for e in entities if e["split"] != "fresh" for _ in range(BIOS_PER_ENTITY)]
    rng_bio.shuffle(bios)

    train_qa = build_train_qa(rng_qa, entities, questions, documents)

    world = {
        "generator": "tools/world/generate.py",
        "version": VERSION,
        "seed": seed,
        "kinds": {k: [a for a, _ in attrs] for k, attrs in ATTRIBUTES.items()},
        "entities": entities,
    }
    return {
        "world.json": json.dumps(world, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n",
        "documents.jsonl": jsonl(documents),
        "questions.jsonl": jsonl(questions),
        "train_text.txt": "\n".join(bios) + "\n",
        "train_qa.jsonl": jsonl(train_qa),
        "compressor_train.jsonl": jsonl(compressor),
    }


def build_train_qa(rng: random.Random, entities: list, questions: list, documents: list) -> list:
    """QA pairs for the reader; never a held-out fact.

    - parametric facts: two pairs without context (different question templates where there are several), and
      for 40% of them a pair with context (for a tenth of those the context lacks the gold document, so the
      reader learns to fall back on what it knows);
    - conflicting facts: one pair without context whose answer is the trained (old) value, and one with context
      whose answer is the knowledge base's (new) value: the context wins;
    - fresh facts: one pair with context.
    A context is the gold document plus zero to four distractors (half the time of the same kind), in random
    order; a third of the context pairs are marked `compressed` (the trainer shows the documents with their
    compressor-dropped words removed).
    """
    by_id = {e["id"]: e for e in entities}
    docs_by_kind: dict = {}
    for d in documents:
        docs_by_kind.setdefault(d["metadata"]["kind"], []).append(d["id"])
    all_docs = [d["id"] for d in documents]

    def context(gold: str, kind: str, include_gold: bool) -> list:
        n = rng.choices([0, 1, 2, 3, 4], weights=[15, 25, 30, 20, 10])[0]
        if not include_gold:
            n = max(n, 1)
        ids = [gold] if include_gold else []
        while len(ids) < n + (1 if include_gold else 0):
            pool = docs_by_kind[kind] if rng.random() < 0.5 else all_docs
            d = rng.choice(pool)
            if d != gold and d not in ids:
                ids.append(d)
        rng.shuffle(ids)
        return ids

    out = []

    def add(q: dict, question: str, answer: str, ctx: list) -> None:
        rec = {"id": "", "qid": q["id"], "question": question, "answer": answer, "context_ids": ctx}
        if ctx:
            rec["compressed"] = rng.random() < 1 / 3
        rec["split"] = q["split"]
        out.append(rec)

    for q in questions:
        if q["heldout"]:
            continue
        e = by_id[q["doc_id"][len("doc-"):]]
        templates = QUESTION_TEMPLATES[(e["kind"], q["attribute"])]
        other = [t for t in templates if t.replace("{n}", e["name"]) != q["question"]]
        if q["split"] == "parametric":
            add(q, q["question"], q["answer"], [])
            alt = rng.choice(other).replace("{n}", e["name"]) if other else q["question"]
            add(q, alt, q["answer"], [])
            if rng.random() < 0.4:
                add(q, q["question"], q["answer"], context(q["doc_id"], q["kind"], rng.random() >= 0.1))
        elif q["split"] == "conflicting":
            add(q, q["question"], q["trained_answer"], [])
            add(q, q["question"], q["answer"], context(q["doc_id"], q["kind"], True))
        else:
            add(q, q["question"], q["answer"], context(q["doc_id"], q["kind"], True))
    rng.shuffle(out)
    for i, rec in enumerate(out):
        rec["id"] = f"t{i:06d}"
    return out


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    ap.add_argument("--out", default="fixtures/world", help="output directory (default fixtures/world)")
    args = ap.parse_args()
    files = generate(args.seed)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for name, content in files.items():
        data = content.encode("utf-8")
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        total += len(data)
        print(f"wrote {os.path.join(args.out, name)}: {len(data) / 1e6:.2f} MB, "
              f"{content.count(chr(10))} lines", file=sys.stderr)
    print(f"total {total / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
