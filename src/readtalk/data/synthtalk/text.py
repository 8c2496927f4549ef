"""Random English sentences from a built-in vocabulary, for SynthTalk speech.

Sentences follow a handful of simple grammatical templates so that the synthesizer reads them
with natural prosody; the vocabulary covers every English viseme class (bilabials, labiodentals,
rounded and spread vowels) many times over.
"""

from __future__ import annotations

import numpy as np

NOUNS = """
apple baby ball bank basket beach bear bird boat book bottle box bread bridge brother bus butter
cake camera candle car cat chair cheese child city clock cloud coffee computer cookie cow cup
dinner doctor dog door dream egg engine family farmer father fish flower forest friend garden
girl glass guitar hammer hand hat horse house island jacket kitchen knife lamp lemon letter lion
machine map market melon milk monkey moon morning mother mountain mouse music night ocean orange
paper park pencil piano picture pillow planet plate pocket potato queen rabbit river road robot
room rose school sheep ship shoe shop singer sister snow song spoon star station street sugar
summer table teacher garden ticket tiger tomato tower town train tree truck umbrella valley
village violin voice wagon water window winter wolf woman world
""".split()
ADJECTIVES = """
big small happy quiet loud bright dark warm cold old young blue green yellow purple brown gentle
brave clever lovely funny heavy empty busy soft smooth round sharp sweet famous beautiful
careful curious early honest lucky modern narrow perfect polite simple strange tiny huge wooden
golden silver friendly wonderful
""".split()
VERBS_T = """
opened found bought painted carried moved pushed pulled watched visited cleaned fixed borrowed
brought wanted needed liked loved helped followed packed measured remembered washed touched
dropped lifted showed shared counted
""".split()
VERBS_I = """
laughed waited smiled jumped danced whispered worked played listened arrived travelled answered
rested wondered slept walked
""".split()
VERBS_BASE = """
open find buy paint carry move push pull watch visit clean fix borrow bring want need like love
help follow pack measure remember wash touch drop lift show share count
""".split()
ADVERBS = """
quickly slowly quietly happily carefully often always never really suddenly finally together
outside tonight yesterday today again
""".split()
NAMES = """
Anna Bob Maria Peter Sophie Michael Olivia Paul Emma Victor Julia Thomas Lucy Mark Fiona William
Nora Ben Monica Oscar
""".split()
PLACES = (
    "in the park|at the market|near the river|by the window|in the kitchen|on the bus|"
    "at school|in the garden|under the bridge|on the mountain|at the beach|in the village"
)
PLACES_L = PLACES.split("|")


_FUNCTION_WORDS = {
    "the",
    "a",
    "an",
    "my",
    "your",
    "our",
    "this",
    "that",
    "and",
    "at",
    "in",
    "on",
    "by",
    "near",
    "under",
    "why",
    "did",
}


def _np(rng: np.random.Generator) -> str:
    det = ("the", "a", "my", "your", "our", "this", "that")[rng.integers(7)]
    adj = f"{rng.choice(ADJECTIVES)} " if rng.uniform() < 0.5 else ""
    noun = rng.choice(NOUNS)
    if det == "a" and (adj or noun)[0] in "aeiou":
        det = "an"
    return f"{det} {adj}{noun}"


def _subject(rng: np.random.Generator) -> str:
    return rng.choice(NAMES) if rng.uniform() < 0.4 else _np(rng)


def sentence(rng: np.random.Generator, max_words: int | None = None) -> str:
    """A random sentence; with ``max_words`` it is cut down to a short phrase that fits."""
    kind = rng.integers(5)
    if kind == 0:
        words = f"{_subject(rng)} {rng.choice(VERBS_T)} {_np(rng)} {rng.choice(PLACES_L)}"
    elif kind == 1:
        words = f"{_subject(rng)} {rng.choice(VERBS_I)} {rng.choice(ADVERBS)}"
    elif kind == 2:
        words = f"{_subject(rng)} {rng.choice(VERBS_T)} {_np(rng)} and {_np(rng)}"
    elif kind == 3:
        words = f"why did {_subject(rng)} {rng.choice(VERBS_BASE)} {_np(rng)}"
    else:
        words = (
            f"{_subject(rng)} {rng.choice(VERBS_I)} {rng.choice(PLACES_L)} {rng.choice(ADVERBS)}"
        )
    tokens = words.split()
    if max_words is not None:
        tokens = tokens[: max(1, max_words)]
        while len(tokens) > 1 and tokens[-1].lower() in _FUNCTION_WORDS:
            tokens.pop()
    text = " ".join(tokens)
    end = "?" if kind == 3 and max_words is None else "."
    return text[0].upper() + text[1:] + end
