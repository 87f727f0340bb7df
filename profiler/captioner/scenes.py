"""Synthetic scenes for the project's own captioner: a seeded scene sampler, a PIL renderer and a
caption writer with varied wording.

A scene is one or two shapes on a plain background. Every attribute a caption names is part of the
scene, so a caption parsed back (profiler.captioner.parse) must give the scene exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
# Reading order: captions list shapes in this order, so each image has one canonical description order.
POSITIONS = ("top left", "top right", "center", "bottom left", "bottom right")
BACKGROUNDS = ("white", "gray", "black")

RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}

# Centres of the five positions in a 64 px image. Corners sit 19 px from the centre on each axis so that
# two large shapes (16 px) with 1 px of jitter never overlap.
CENTRES = {
    "top left": (13, 13),
    "top right": (51, 13),
    "center": (32, 32),
    "bottom left": (13, 51),
    "bottom right": (51, 51),
}
HALF_SIZE = {"small": 4, "large": 8}


@dataclass(frozen=True, order=True)
class Shape:
    position: str  # first, so sorting Shapes gives reading order after mapping (see Scene.canonical)
    size: str
    colour: str
    kind: str


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]  # in reading order of position, no two at the same position

    @staticmethod
    def canonical(background: str, shapes: list[Shape] | tuple[Shape, ...]) -> Scene:
        ordered = tuple(sorted(shapes, key=lambda s: POSITIONS.index(s.position)))
        return Scene(background, ordered)

    def key(self) -> str:
        """A stable text form of the scene: the basis of the split rule and of equality in reports."""
        parts = [f"{s.size} {s.colour} {s.kind} @ {s.position}" for s in self.shapes]
        return f"{self.background} | " + " ; ".join(parts)


def all_shapes() -> list[Shape]:
    return [Shape(p, z, c, k) for p in POSITIONS for z in SIZES for c in COLOURS for k in SHAPES]


def sample_scene(rng: random.Random) -> Scene:
    """One scene: a background and one or two shapes at distinct positions (two shapes half the time)."""
    count = rng.choice((1, 2))
    positions = rng.sample(POSITIONS, count)
    shapes = [Shape(p, rng.choice(SIZES), rng.choice(COLOURS), rng.choice(SHAPES)) for p in positions]
    return Scene.canonical(rng.choice(BACKGROUNDS), shapes)


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)
    return (r, g, b)


def render(scene: Scene, rng: random.Random | None = None) -> Image.Image:
    """The scene as a 64x64 RGB image. With an rng, colours and positions jitter slightly, so the model
    learns the attributes rather than exact pixels; without one, the drawing is exact."""
    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), RGB[scene.background])
    draw = ImageDraw.Draw(im)
    for s in scene.shapes:
        cx, cy = CENTRES[s.position]
        fill = RGB[s.colour]
        if rng is not None:
            cx += rng.randint(-1, 1)
            cy += rng.randint(-1, 1)
            fill = _jitter(fill, rng, 12)
        h = HALF_SIZE[s.size]
        box = (cx - h, cy - h, cx + h, cy + h)
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    return im


# ---- captions -------------------------------------------------------------------------------------

SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
    "center": ("in the center", "in the middle", "at the center"),
}
COUNT_WORDS = {1: "one", 2: "two"}

# Whole-caption templates. {objs} is the shapes joined by "and", {bg} the background colour,
# {n}/{noun} the count ("one shape", "two shapes").
TEMPLATES = (
    "{objs} on a {bg} background",
    "there {be} {objs} on a {bg} background",
    "a {bg} background with {objs}",
    "{n} {noun} on a {bg} background {objs}",
    "the background is {bg} with {objs}",
)


def describe_shape(shape: Shape, rng: random.Random) -> str:
    size = rng.choice(SIZE_WORDS[shape.size])
    return f"a {size} {shape.colour} {shape.kind} {rng.choice(POSITION_PHRASES[shape.position])}"


def caption(scene: Scene, rng: random.Random, template: int | None = None) -> str:
    """A caption of the scene: a template (random unless given) filled with randomly chosen synonyms."""
    t = TEMPLATES[rng.randrange(len(TEMPLATES)) if template is None else template]
    objs = " and ".join(describe_shape(s, rng) for s in scene.shapes)
    count = len(scene.shapes)
    return t.format(objs=objs, bg=scene.background, be="is" if count == 1 else "are",
                    n=COUNT_WORDS[count], noun="shape" if count == 1 else "shapes")


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (the tokenizer is built from it)."""
    words: list[str] = []
    texts = [*TEMPLATES, *SHAPES, *COLOURS, *BACKGROUNDS, *COUNT_WORDS.values(), "shape shapes is are and a"]
    texts += [w for ws in SIZE_WORDS.values() for w in ws]
    texts += [p for ps in POSITION_PHRASES.values() for p in ps]
    for text in texts:
        for w in text.split():
            if not w.startswith("{") and w not in words:
                words.append(w)
    return words
