"""Prompt vocabulary: how a text prompt picks the look of a maze.

A prompt is a space-separated list of words, at most one word per category; a category left out takes its
default. Every look the renderer can make is reachable by words (there are no hidden style knobs), so the
world model can be conditioned on the text alone. `canonical_prompt` writes one word per category in a
fixed order: that canonical string is what datasets store and what the world model is conditioned on, so
"night brick" and "brick night" train the same condition.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# category -> accepted words; the FIRST word of each category is its default.
PROMPT_VOCABULARY: dict[str, tuple[str, ...]] = {
    "wall": ("brick", "stone", "wood", "metal", "concrete", "tile"),
    "floor": ("checker", "parquet", "carpet", "cobble"),
    "accent": ("red", "green", "blue", "yellow", "purple", "orange"),
    "light": ("day", "dusk", "night"),
    "fog": ("clear", "haze", "fog"),
}
CATEGORIES: tuple[str, ...] = tuple(PROMPT_VOCABULARY)
DEFAULTS: dict[str, str] = {c: words[0] for c, words in PROMPT_VOCABULARY.items()}

_WORD_TO_CATEGORY: dict[str, str] = {w: c for c, ws in PROMPT_VOCABULARY.items() for w in ws}
assert len(_WORD_TO_CATEGORY) == sum(len(ws) for ws in PROMPT_VOCABULARY.values()), "words must be unique"


class PromptError(ValueError):
    """A prompt with an unknown word or two words of one category."""


@dataclass(frozen=True)
class Style:
    """One word per category; hashable so renderer assets (textures, light tables) can be cached by it."""
    wall: str = DEFAULTS["wall"]
    floor: str = DEFAULTS["floor"]
    accent: str = DEFAULTS["accent"]
    light: str = DEFAULTS["light"]
    fog: str = DEFAULTS["fog"]

    def prompt(self) -> str:
        """The canonical prompt of this style (one word per category, fixed order)."""
        return " ".join(getattr(self, c) for c in CATEGORIES)


def vocabulary_text() -> str:
    """Accepted words per category, for error messages and help."""
    return "; ".join(f"{c}: {', '.join(ws)} (default {ws[0]})" for c, ws in PROMPT_VOCABULARY.items())


def parse_prompt(prompt: str) -> Style:
    """Parse a prompt into a Style; raise PromptError (a ValueError) listing the accepted words if it is bad."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string of words, got {type(prompt).__name__}; "
                          f"accepted words per category: {vocabulary_text()}")
    chosen: dict[str, str] = {}
    for word in prompt.lower().split():
        cat = _WORD_TO_CATEGORY.get(word)
        if cat is None:
            raise PromptError(f"prompt {prompt!r}: unknown word {word!r}; accepted words per category: "
                              f"{vocabulary_text()}")
        if cat in chosen and chosen[cat] != word:
            raise PromptError(f"prompt {prompt!r}: two words of category {cat!r} ({chosen[cat]!r} and {word!r}); "
                              f"use at most one of {', '.join(PROMPT_VOCABULARY[cat])}. "
                              f"Accepted words per category: {vocabulary_text()}")
        chosen[cat] = word
    return Style(**{**DEFAULTS, **chosen})


def canonical_prompt(prompt: str) -> str:
    """One word per category in fixed order, defaults filled in: the string the world model is conditioned on."""
    return parse_prompt(prompt).prompt()


def random_prompt(rng: np.random.Generator) -> str:
    """A canonical prompt with every category drawn uniformly (datasets draw one per episode)."""
    return " ".join(str(ws[int(rng.integers(len(ws)))]) for ws in PROMPT_VOCABULARY.values())
