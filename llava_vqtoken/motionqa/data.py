"""Episodes of coloured shapes moving on a grey field, with multiple-choice questions whose answers
need object identity, direction of motion, temporal order of appearance, or counting.

Several objects per clip, static distractors, staggered appearance times and questions about one
named object, so that a single global summary of the clip is not enough.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from ..synthetic import DIRECTIONS

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40),
          "magenta": (210, 50, 210), "cyan": (40, 210, 220)}
SHAPES = ("square", "circle", "triangle", "cross")
TYPES = ("identity", "direction", "order", "count")
REFER = ("color", "order")
#: the answers of a count question, in their fixed order (one per possible number of moving objects)
COUNTS = tuple(str(k) for k in range(1, len(COLORS) + 1))
#: clear motion: frames the first object is alone before any other appears
SOLO_FRAMES = 2


def min_frames(objects: int) -> int:
    """The fewest frames per clip at which every moving object is visible at two positions: object
    starts are drawn from ``range(max(objects, frames // 2))`` and, with clear motion, come
    ``SOLO_FRAMES`` after the first, so a shorter clip can show a moving object only in its last frame."""
    return max(SOLO_FRAMES + 2, objects + 1)


def object_size(size: int, cell: int | None) -> int:
    """An object's width in pixels: one patch (``cell``) on the patch grid, else a sixth of the field."""
    return cell or max(6, size // 6)


@dataclass
class Obj:
    color: str
    shape: str
    direction: str | None  # None: a static distractor
    start: int  # first frame where it is visible
    y: float
    x: float


def _mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= c**2 + 0.5
    if shape == "triangle":
        return yy >= np.abs(xx - c) * 2 - 1
    return (np.abs(yy - c) <= size / 6) | (np.abs(xx - c) <= size / 6)  # cross


@dataclass
class Clip:
    """A clip kept as its distinct frames: ``frames`` [U, size, size, 3] uint8 in order of first
    appearance and ``index`` [T] (frame t is ``frames[index[t]]``). Objects move for a few frames and
    then rest, so a clip of thousands of frames has a handful of distinct ones: a long split fits in
    memory, and a per-frame processor needs to see only these."""

    frames: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def full(self) -> np.ndarray:
        """The clip as [T, size, size, 3] uint8."""
        return self.frames[self.index]


def _positions(o: Obj, frames: int, size: int, obj_size: int, speed: float, cell: int | None) -> np.ndarray:
    """[T, 3] int: (visible, y, x) of one object at every frame (y, x are 0 before it appears)."""
    t = np.arange(frames)
    dy, dx = DIRECTIONS[o.direction] if o.direction else (0, 0)
    y = np.clip(o.y + dy * speed * (t - o.start), 0, size - obj_size).astype(np.int64)  # int(): floor, >= 0
    x = np.clip(o.x + dx * speed * (t - o.start), 0, size - obj_size).astype(np.int64)
    if cell:
        y, x = (np.round(c / cell).astype(np.int64) * cell for c in (y, x))  # round half to even, as round()
    visible = t >= o.start
    return np.stack([visible, y * visible, x * visible], 1)


def _place(o: Obj, size: int, obj_size: int, s0: int, frames: int) -> None:
    """Clear motion: start at least two frames after the first object, on the side it moves away from,
    on whole steps."""
    if o.start != s0:
        o.start = min(max(o.start, s0 + SOLO_FRAMES), frames - 1)
    if o.direction:  # map the drawn position (0.3-0.7 of the field) to the side it moves away from
        dy, dx = DIRECTIONS[o.direction]
        for axis, step in (("y", dy), ("x", dx)):
            if step:
                frac = (getattr(o, axis) / size - 0.3) / 0.4
                setattr(o, axis, (size - obj_size) * (frac * 0.35 if step > 0 else 0.65 + frac * 0.35))
    o.y, o.x = (float(obj_size * int(c / obj_size + 0.5)) for c in (o.y, o.x))  # whole steps


def _objects(rng: random.Random, frames: int, size: int, objects: int) -> list[Obj]:
    colors = rng.sample(list(COLORS), objects)
    objs = []
    n_moving = rng.randint(2, objects)
    starts = rng.sample(range(0, max(objects, frames // 2)), objects)
    for i, color in enumerate(colors):
        direction = rng.choice(list(DIRECTIONS)) if i < n_moving else None
        objs.append(Obj(color, rng.choice(SHAPES), direction, starts[i], rng.uniform(0.3, 0.7) * size,
                        rng.uniform(0.3, 0.7) * size))
    first = min(range(objects), key=lambda i: objs[i].start)
    if objs[first].direction is None:  # the object that appears first always moves
        objs[first].start, objs[0].start = objs[0].start, objs[first].start
    return objs


def make_clip(
    rng: random.Random,
    frames: int = 16,
    size: int = 64,
    objects: int = 3,
    cell: int | None = None,
    clear_motion: bool = False,
) -> tuple[Clip, list[Obj]]:
    """One clip and its objects (distinct colours, at least 2 moving), as :class:`Clip`.

    With ``cell`` (the vision tower's patch size) every object is one patch drawn on the patch grid
    and moves by whole patches: what a token holds is then unambiguous, so the benchmark measures
    what compression keeps rather than how fast a tower learns sub-patch shapes.

    ``clear_motion``: a moving object moves one object width per frame and starts with room to move
    along its direction, and the object that appears first is alone for its first two frames, so
    its direction shows without tracking it among the others.

    Objects appear at frames drawn from the clip's first half, so in a long clip the events (an
    object appearing, its few frames of motion) are spread out between long still stretches."""
    objs = _objects(rng, frames, size, objects)
    obj_size = object_size(size, cell)
    speed = size * 0.4 / frames
    if clear_motion:
        speed = float(obj_size)
        s0 = min(o.start for o in objs)
        for o in objs:
            _place(o, size, obj_size, s0, frames)
    rng.shuffle(objs)
    states = np.concatenate([_positions(o, frames, size, obj_size, speed, cell) for o in objs], 1)
    _, first, inverse = np.unique(states, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # distinct frames in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out = np.full((len(order), size, size, 3), 110, np.uint8)
    for u, t in enumerate(first[order]):
        for i, o in enumerate(objs):
            visible, y, x = states[t, 3 * i : 3 * i + 3]
            if visible:
                out[u, y : y + obj_size, x : x + obj_size][_mask(o.shape, obj_size)] = COLORS[o.color]
    return Clip(out, rank[inverse.reshape(-1)]), objs


def make_episode(
    rng: random.Random,
    frames: int = 16,
    size: int = 64,
    objects: int = 3,
    cell: int | None = None,
    clear_motion: bool = False,
) -> tuple[np.ndarray, list[Obj]]:
    """One clip [T, size, size, 3] uint8 and its objects: :func:`make_clip` with every frame drawn out."""
    clip, objs = make_clip(rng, frames, size, objects, cell, clear_motion)
    return clip.full(), objs


def make_question(
    rng: random.Random, objs: list[Obj], qtype: str, shuffle: bool = True, refer: str = "color"
) -> tuple[str, list[str], int]:
    """(question, 4 options, index of the answer). Options are shuffled, or with ``shuffle=False`` in
    a fixed order (shapes, directions and colours in their table order, counts ascending), so that a
    letter always names the same answer for a question type (counts: 1, 2, 3 and the true count when
    more than four objects move, so the last letter then names 4 or more).

    ``refer``: how identity and direction questions name their object: by ``color`` (any object;
    "the red object") or by ``order`` of appearance ("the object that appears first", which always
    moves)."""
    if refer not in REFER:
        raise ValueError(f"refer must be one of {REFER}, got {refer!r}")
    first = min(objs, key=lambda o: o.start)
    if qtype == "identity":
        o = rng.choice(objs) if refer == "color" else first
        opts = [o.shape] + rng.sample([s for s in SHAPES if s != o.shape], 3)
        q = (f"What shape is the {o.color} object?" if refer == "color"
             else "What shape is the object that appears first?")
    elif qtype == "direction":
        o = rng.choice([o for o in objs if o.direction]) if refer == "color" else first
        opts = [o.direction] + [d for d in DIRECTIONS if d != o.direction]
        q = (f"Which way does the {o.color} {o.shape} move?" if refer == "color"
             else "Which way does the object that appears first move?")
    elif qtype == "order":
        others = [o.color for o in objs if o is not first]
        pool = [c for c in COLORS if c != first.color and c not in others]
        opts = [first.color] + (others + pool)[:3]
        q = "Which object appears first?"
    else:
        n = sum(1 for o in objs if o.direction)
        opts = [str(n)] + [str(k) for k in range(1, 5) if k != n][:3]
        q = "How many objects are moving?"
    answer = opts[0]
    if shuffle:
        rng.shuffle(opts)
    else:
        table = [*SHAPES, *DIRECTIONS, *COLORS, *COUNTS]
        opts.sort(key=table.index)
    return q, opts, opts.index(answer)


def prompt_text(question: str, options: list[str]) -> str:
    letters = "\n".join(f"{letter}. {opt}" for letter, opt in zip("ABCD", options))
    return f"{question}\n{letters}\nAnswer with the option's letter."


def make_split(
    n: int,
    seed: int,
    frames: int,
    size: int,
    objects: int = 3,
    shuffle_options: bool = True,
    cell: int | None = None,
    types: tuple[str, ...] = TYPES,
    refer: str = "color",
    clear_motion: bool = False,
):
    """n samples: (clip, question type, prompt, answer index), the question ``types`` balanced; each
    clip is a :class:`Clip` (its distinct frames), so thousands of frames per clip stay small."""
    unknown = set(types) - set(TYPES)
    if unknown or not types:
        raise ValueError(f"question types must be a non-empty subset of {TYPES}, got {tuple(types)}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        clip, objs = make_clip(rng, frames, size, objects, cell, clear_motion)
        qtype = types[i % len(types)]
        q, opts, ans = make_question(rng, objs, qtype, shuffle_options, refer)
        out.append((clip, qtype, prompt_text(q, opts), ans))
    return out
