"""Caption -> scene: reads any wording the caption writer produces (and a model's imitation of it)
back into the canonical Scene, so quality is judged on meaning, not on wording.

The parser is strict: an unknown word, a shape with a missing or repeated attribute, two shapes at one
position or a count that disagrees with the shapes is a ParseError (a wrong caption, in scoring).
"""

from __future__ import annotations

from profiler.captioner.scenes import BACKGROUNDS, COLOURS, COUNT_WORDS, SHAPES, SIZE_WORDS, Scene, Shape


class ParseError(ValueError):
    """The caption does not describe a valid scene."""


_SIZE = {word: size for size, words in SIZE_WORDS.items() for word in words}
_VERTICAL = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_HORIZONTAL = {"left": "left", "right": "right"}
_CENTRE = {"center", "middle", "centre"}
_COUNT = {word: n for n, word in COUNT_WORDS.items()}
# Words that carry no attribute of a shape.
_FILLER = {"a", "an", "on", "background", "there", "with", "the", "is", "are", "at", "in", "corner",
           "shape", "shapes", "of"}


def _segment_shape(words: list[str]) -> Shape | None:
    """The shape one "and"-separated segment describes, or None if it names no shape attribute."""
    sizes = [_SIZE[w] for w in words if w in _SIZE]
    colours = [w for w in words if w in COLOURS]
    kinds = [w for w in words if w in SHAPES]
    vertical = [_VERTICAL[w] for w in words if w in _VERTICAL]
    horizontal = [_HORIZONTAL[w] for w in words if w in _HORIZONTAL]
    centre = [w for w in words if w in _CENTRE]
    if not (sizes or colours or kinds or vertical or horizontal or centre):
        return None
    text = " ".join(words)
    for name, found in (("size", sizes), ("colour", colours), ("shape", kinds)):
        if len(found) != 1:
            raise ParseError(f"{text!r}: expected one {name}, found {len(found)}")
    if centre and not vertical and not horizontal and len(centre) == 1:
        position = "center"
    elif not centre and len(vertical) == 1 and len(horizontal) == 1:
        position = f"{vertical[0]} {horizontal[0]}"
    else:
        raise ParseError(f"{text!r}: no single position")
    return Shape(position, sizes[0], colours[0], kinds[0])


def parse(caption: str) -> Scene:
    """The scene a caption describes; raises ParseError when it describes none."""
    words = caption.lower().replace(",", " ").replace(".", " ").replace(":", " ").split()
    known = _FILLER | set(_SIZE) | set(COLOURS) | set(SHAPES) | set(BACKGROUNDS) | set(_VERTICAL) \
        | set(_HORIZONTAL) | _CENTRE | set(_COUNT) | {"and"}
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ParseError(f"unknown words {unknown}")
    backgrounds = [w for w in words if w in BACKGROUNDS]
    if len(backgrounds) != 1:
        raise ParseError(f"expected one background colour, found {len(backgrounds)}")
    counts = [_COUNT[w] for w in words if w in _COUNT]
    if len(counts) > 1:
        raise ParseError("more than one count")

    segments: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            segments.append([])
        elif w not in _COUNT:
            segments[-1].append(w)
    shapes = [s for s in (_segment_shape(seg) for seg in segments) if s is not None]
    if not 1 <= len(shapes) <= 2:
        raise ParseError(f"expected one or two shapes, found {len(shapes)}")
    if len({s.position for s in shapes}) != len(shapes):
        raise ParseError("two shapes at one position")
    if counts and counts[0] != len(shapes):
        raise ParseError(f"says {counts[0]} shapes but describes {len(shapes)}")
    return Scene.canonical(backgrounds[0], shapes)


def try_parse(caption: str) -> Scene | None:
    try:
        return parse(caption)
    except ParseError:
        return None
