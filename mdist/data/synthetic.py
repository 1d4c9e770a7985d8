"""A synthetic multilingual corpus with real parallel structure (the embedded demo's data).

All languages share one latent sentence generator (subject, verb, object, adjectives, a number);
each language has its own lexicon (random syllable words) and its own word order (SVO or SOV,
adjective before or after the noun). Numbers and every third noun (names) are written the same
in every language, the way names and digits anchor real languages to each other. Rendering one latent sentence in two
languages gives a translation pair.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
ROLES = ("noun", "verb", "adj")
NOUN_KINDS = ("place", "organisation", "name")  # by concept index % 3; names are the nouns shared by all languages
ENTITY_TAGS = {"place": "B-LOC", "organisation": "B-ORG"}  # names stay O: written alike everywhere, they would transfer without alignment


@dataclass(frozen=True)
class LanguageSpec:
    name: str
    svo: bool  # False: subject-object-verb
    adj_first: bool
    seed: int


DEFAULT_LANGUAGES = (LanguageSpec("en", svo=True, adj_first=True, seed=1), LanguageSpec("tr", svo=False, adj_first=False, seed=2))


class SyntheticCorpus:
    """Latent sentences over `concepts` per role, rendered per language."""

    def __init__(self, languages=DEFAULT_LANGUAGES, concepts: int = 60, seed: int = 0):
        self.languages = {spec.name: spec for spec in languages}
        self.concepts = concepts
        self.seed = seed
        self.lexicons = {spec.name: self._lexicon(spec.seed) for spec in languages}
        names = self._lexicon(seed + 1000)["noun"]
        for lexicon in self.lexicons.values():
            lexicon["noun"][2::3] = [name.capitalize() for name in names[2::3]]

    def _lexicon(self, seed: int) -> dict[str, list[str]]:
        rng = random.Random(seed)
        words: set[str] = set()
        lexicon = {}
        for role in ROLES:
            entries = []
            while len(entries) < self.concepts:
                word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
                if word not in words:
                    words.add(word)
                    entries.append(word)
            lexicon[role] = entries
        return lexicon

    def latent(self, rng: random.Random) -> dict:
        # Zipf-like concept frequencies, as in natural text.
        pick = lambda: min(int(rng.paretovariate(1.2)) - 1, self.concepts - 1)  # noqa: E731
        return {
            "subj": pick(), "subj_adj": pick() if rng.random() < 0.5 else None,
            "verb": pick(), "obj": pick(), "obj_adj": pick() if rng.random() < 0.5 else None,
            "number": rng.randint(1, 99) if rng.random() < 0.3 else None,
        }

    def words(self, latent: dict, lang: str) -> list[tuple[str, str]]:
        """(word, kind) in the language's order; kind: one of NOUN_KINDS, verb, adj, number or punct."""
        spec, lex = self.languages[lang], self.lexicons[lang]

        def phrase(noun: int, adj: int | None, number: int | None = None) -> list[tuple[str, str]]:
            words = [(lex["noun"][noun], NOUN_KINDS[noun % 3])]
            if adj is not None:
                words = [(lex["adj"][adj], "adj"), *words] if spec.adj_first else [*words, (lex["adj"][adj], "adj")]
            return ([(str(number), "number")] if number is not None else []) + words

        subj = phrase(latent["subj"], latent["subj_adj"])
        obj = phrase(latent["obj"], latent["obj_adj"], latent["number"])
        verb = [(lex["verb"][latent["verb"]], "verb")]
        return (subj + verb + obj if spec.svo else subj + obj + verb) + [(".", "punct")]

    def render(self, latent: dict, lang: str) -> str:
        return " ".join(word for word, _ in self.words(latent, lang))

    def tagged(self, lang: str, sentences: int, split: int = 2) -> list[list[tuple[str, str]]]:
        """NER-style sentences: places and organisations tagged by concept (ENTITY_TAGS), everything else O.
        Their words differ between languages, so tagging them in a language the tagger was never
        trained on takes cross-lingual alignment."""
        rng = random.Random(f"{self.seed}-tagged-{split}")
        return [[(word, ENTITY_TAGS.get(kind, "O")) for word, kind in self.words(self.latent(rng), lang)] for _ in range(sentences)]

    def monolingual(self, lang: str, documents: int, sentences_per_doc: int = 4, split: int = 0) -> list[str]:
        """Independent (non-parallel) documents per language; `split` separates train from held-out."""
        rng = random.Random(f"{self.seed}-{lang}-{split}")
        return [" ".join(self.render(self.latent(rng), lang) for _ in range(sentences_per_doc)) for _ in range(documents)]

    def parallel(self, src: str, trg: str, pairs: int, split: int = 1) -> tuple[list[str], list[str]]:
        """Held-out translation pairs: line i of one is the translation of line i of the other."""
        rng = random.Random(f"{self.seed}-parallel-{split}")
        latents = [self.latent(rng) for _ in range(pairs)]
        return [self.render(x, src) for x in latents], [self.render(x, trg) for x in latents]
