"""Shape scenes: 1-8 coloured shapes, for counting, colour, spatial relations and grounding.

The ground truth is unambiguous by construction: no two objects share
(shape, colour, size), objects never overlap (their boxes keep a gap), a
question names an object only by a description that fits it alone, and a
spatial question is asked only where the answer is clear by a margin. Every
answer is computed after augmentation, from the outlines moved by the same
homography as the pixels.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .augment import AugmentConfig, get_preset, photometric, random_homography, transform_points, warp
from .boxes import format_box, format_point, normalise_box
from .sample import QA
from .words import NUMBER_WORDS

COLOURS = {  # names a person would agree on, far from each other and from the light backgrounds
    "red": (215, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (235, 205, 10),
    "green": (30, 150, 55),
    "blue": (35, 75, 215),
    "purple": (135, 50, 175),
    "brown": (120, 70, 30),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "rectangle")
TOTAL_COUNT_QUESTIONS = ("How many shapes are there?", "How many shapes are in the image?", "How many objects are there?")
COLOUR_QUESTIONS = ("What colour is the {}?", "What is the colour of the {}?", "Which colour is the {}?")
GROUNDING_QUESTIONS = ("Where is the {}?", "Find the {}.", "Give the bounding box of the {}.")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "rectangle": "rectangles"}
SIZES = {"small": (0.045, 0.065), "large": (0.085, 0.11)}  # half-extent as a fraction of the side; a gap between them
BACKGROUNDS = ("plain", "noisy", "gradient")
KINDS = [(s, c, z) for s in SHAPES for c in COLOURS for z in SIZES]  # 80 kinds; a scene never repeats one


@dataclass
class ShapesConfig:
    size: int = 224
    min_objects: int = 1
    max_objects: int = 8
    augment: str | AugmentConfig = "light"
    gap: float = 0.03  # smallest gap between two boxes, as a fraction of the side
    margin: float = 0.05  # from the frame
    clear: float = 0.1  # a spatial relation is asked only when centres differ by this fraction of the side
    # k > 0: each scene's shapes come from k kinds of shape in k colours. Scenes drawn from all 80 kinds almost never
    # hold three of one shape or colour (4% of the per-kind counting turns are 3 or more), so "how many squares?" with
    # the answer 3 goes unlearned; k = 2 makes such counts common (scripts/make_crowded_counting_data.py).
    few_kinds: int = 0

    def __post_init__(self):
        if self.size < 32:  # below this, pixel rounding eats the gaps between cells
            raise ValueError(f"size must be at least 32 pixels for shapes, not {self.size}")
        if not 1 <= self.min_objects <= self.max_objects <= 8:
            raise ValueError("objects must be within 1..8")
        if self.few_kinds and not (2 <= self.few_kinds <= len(SHAPES) and 2 * self.few_kinds ** 2 >= self.min_objects):
            raise ValueError(f"few_kinds must be 0 or 2..{len(SHAPES)}, with room for min_objects distinct objects")
        # one object per 3x3 cell: the largest must fit its cell with half a gap each side and the frame margin
        largest = SIZES["large"][1]
        if 2 * largest + self.gap / 2 + max(self.gap / 2, self.margin) > 1 / 3:
            raise ValueError("gap/margin too large for one object per cell")


class ShapesGenerator:
    name = "shapes"
    slices = ("counting", "colour", "spatial", "grounding")

    def __init__(self, cfg: ShapesConfig | None = None, **kw):
        self.cfg = cfg or ShapesConfig(**kw)
        self.aug = get_preset(self.cfg.augment)

    # ---- spec: what is in the scene and in which cell, cheap to draw and to key ---------------------------------
    def spec(self, rng: random.Random) -> dict:
        while True:
            n = rng.randint(self.cfg.min_objects, self.cfg.max_objects)
            pool = KINDS
            if self.cfg.few_kinds:  # (the default draws exactly as before: same seed, same scenes)
                shapes = rng.sample(SHAPES, self.cfg.few_kinds)
                colours = rng.sample(sorted(COLOURS), self.cfg.few_kinds)
                pool = [k for k in KINDS if k[0] in shapes and k[1] in colours]
                if n > len(pool):
                    continue
            kinds = rng.sample(pool, n)
            if _colour_referents([{"shape": k[0], "colour": k[1], "size": k[2]} for k in kinds]):
                break
        cells = rng.sample(range(9), n)  # one object per cell of a 3x3 grid: never crowded, so placement never fails
        objects = []
        for (shape, colour, size), cell in zip(kinds, cells):
            lo, hi = SIZES[size]
            jitter = [rng.randint(-12, 12) for _ in range(3)]
            objects.append({"shape": shape, "colour": colour, "size": size, "cell": cell,
                            "r": max(3, round(rng.uniform(lo, hi) * self.cfg.size)),
                            "tall": shape == "rectangle" and rng.random() < 0.5,
                            "rgb": [min(255, max(0, c + j)) for c, j in zip(COLOURS[colour], jitter)]})
        base = [rng.randint(222, 250) for _ in range(3)]
        other = [min(252, max(215, v + rng.randint(-25, 25))) for v in base]
        bg = {"kind": rng.choice(BACKGROUNDS), "rgb": base, "rgb2": other, "amp": rng.randint(4, 12)}
        return {"objects": objects, "background": bg}

    def split_key(self, spec: dict) -> str:
        # which kinds sit in which cell: a test layout is new, not a nudged training one
        return ";".join(sorted(f"{o['shape']}/{o['colour']}/{o['size']}@{o['cell']}" for o in spec["objects"]))

    def _place(self, objects: list[dict], rng: random.Random) -> list[dict]:
        """Each object lies wholly inside its own cell, shrunk by half the gap: no overlap is possible, by construction."""
        s, half_gap, m = self.cfg.size, self.cfg.gap * self.cfg.size / 2, self.cfg.margin * self.cfg.size
        placed = []
        for o in objects:
            hw, hh = _half_extents(o["shape"], o["r"], o["tall"])
            col, row = o["cell"] % 3, o["cell"] // 3
            x_lo, x_hi = max(col * s / 3 + half_gap, m) + hw, min((col + 1) * s / 3 - half_gap, s - m) - hw
            y_lo, y_hi = max(row * s / 3 + half_gap, m) + hh, min((row + 1) * s / 3 - half_gap, s - m) - hh
            cx, cy = math.ceil(rng.uniform(x_lo, x_hi) - 0.5), math.ceil(rng.uniform(y_lo, y_hi) - 0.5)
            cx, cy = min(max(cx, math.ceil(x_lo)), math.floor(x_hi)), min(max(cy, math.ceil(y_lo)), math.floor(y_hi))
            placed.append({**o, "cx": cx, "cy": cy})
        return placed

    # ---- build: render, augment, then read the answers off the final geometry ----------------------------------
    def build(self, spec: dict, rng: random.Random):
        s = self.cfg.size
        placed = self._place(spec["objects"], rng)
        img = _background(spec["background"], s, rng)
        draw = ImageDraw.Draw(img)
        outlines = []
        for o in placed:
            pts = _outline(o)
            if o["shape"] == "circle":
                draw.ellipse([o["cx"] - o["r"], o["cy"] - o["r"], o["cx"] + o["r"], o["cy"] + o["r"]], fill=tuple(o["rgb"]))
            else:
                draw.polygon([tuple(p) for p in pts.astype(int).tolist()], fill=tuple(o["rgb"]))
            outlines.append(pts)
        H = None
        for _ in range(4):  # a warp that pushes a shape off the frame is redrawn, then dropped
            H = random_homography(rng, self.aug, (s, s))
            if H is None or all(_inside(transform_points(H, p), s) for p in outlines):
                break
            H = None
        if H is not None:
            img = warp(img, H, tuple(spec["background"]["rgb"]))
            outlines = [transform_points(H, p) for p in outlines]
        img = photometric(img, rng, self.aug)

        objects = []
        for o, pts in zip(placed, outlines):
            if H is None:  # exact pixel extents of PIL's fill
                box_px = [int(pts[:, 0].min()), int(pts[:, 1].min()), int(pts[:, 0].max()) + 1, int(pts[:, 1].max()) + 1]
            else:
                box_px = [max(0.0, float(pts[:, 0].min())), max(0.0, float(pts[:, 1].min())),
                          min(float(s), float(pts[:, 0].max()) + 1), min(float(s), float(pts[:, 1].max()) + 1)]
            cx, cy = (box_px[0] + box_px[2]) / 2, (box_px[1] + box_px[3]) / 2
            objects.append({"shape": o["shape"], "colour": o["colour"], "size": o["size"], "rgb": o["rgb"],
                            "box_px": [round(v, 2) for v in box_px], "box": normalise_box(box_px, (s, s)),
                            "center": [round(cx, 2), round(cy, 2)], "position": _position_name(cx, cy, s)})
        truth = {"size": [s, s], "background": spec["background"]["kind"], "warped": H is not None, "objects": objects}
        qa = [self._counting(objects, rng), self._colour(objects, rng), self._spatial(objects, rng), self._grounding(objects, rng)]
        return img, truth, _caption(objects, spec["background"]["kind"], s), [q for q in qa if q is not None]

    # ---- questions ----------------------------------------------------------------------------------------------
    def _counting(self, objects, rng) -> QA:
        draw = rng.random()
        if draw < 0.4:
            q, kind = rng.choice(TOTAL_COUNT_QUESTIONS), "all shapes"
            n = len(objects)
        elif draw < 0.75:
            present = sorted({o["colour"] for o in objects})
            colour = rng.choice(present) if rng.random() < 0.85 else rng.choice(sorted(COLOURS))
            q, kind = f"How many {colour} shapes are there?", "one colour"
            n = sum(o["colour"] == colour for o in objects)
        else:
            present = sorted({o["shape"] for o in objects})
            shape = rng.choice(present) if rng.random() < 0.85 else rng.choice(SHAPES)
            q, kind = f"How many {PLURALS[shape]} are there?", "one shape"
            n = sum(o["shape"] == shape for o in objects)
        return QA(q, str(n), "counting", "exact", [NUMBER_WORDS[n]], kind=kind)

    def _colour(self, objects, rng) -> QA:
        o, desc = rng.choice(_colour_referents(objects))
        q = rng.choice(COLOUR_QUESTIONS).format(desc)
        return QA(q, o["colour"], "colour", "exact")

    def _spatial(self, objects, rng) -> QA | None:
        clear = self.cfg.clear * self.cfg.size
        if len(objects) == 1:
            o = objects[0]
            desc = _describe(o, objects)
            dx, dy = o["center"][0] - self.cfg.size / 2, o["center"][1] - self.cfg.size / 2
            if abs(dx) >= clear / 2 and (abs(dx) >= abs(dy) or abs(dy) < clear / 2):
                return QA(f"Is the {desc} on the left or the right side of the image?", "left" if dx < 0 else "right", "spatial", "exact",
                          kind="lone shape: left / right")
            if abs(dy) >= clear / 2:
                return QA(f"Is the {desc} in the top or the bottom half of the image?", "top" if dy < 0 else "bottom", "spatial", "exact",
                          kind="lone shape: top / bottom")
            return None
        if rng.random() < 0.3:
            qa = _extreme(objects, rng, clear)
            if qa is not None:
                return qa
        pairs = []
        for a in objects:
            for b in objects:
                if a is b:
                    continue
                dx, dy = b["center"][0] - a["center"][0], b["center"][1] - a["center"][1]
                if dx >= clear:
                    pairs.append((a, b, "left of"))  # a is left of b
                if dy >= clear:
                    pairs.append((a, b, "above"))
        if not pairs:
            return _extreme(objects, rng, clear)
        a, b, rel = rng.choice(pairs)
        if rng.random() < 0.5:  # the same fact, phrased from the other side
            a, b, rel = b, a, {"left of": "right of", "above": "below"}[rel]
        yes = rng.random() < 0.5
        if not yes:  # swapping the two makes the relation false, and clearly so by the margin
            a, b = b, a
        q = f"Is the {_describe(a, objects)} {rel} the {_describe(b, objects)}?"
        return QA(q, "yes" if yes else "no", "spatial", "yesno",
                  kind=("relation: left / right", "relation: above / below")[relation_axis(rel)])

    def _grounding(self, objects, rng) -> QA:
        o = rng.choice(objects)
        q = rng.choice(GROUNDING_QUESTIONS).format(_describe(o, objects))
        return QA(q, format_box(o["box"]), "grounding", "iou")


# ---- helpers ---------------------------------------------------------------------------------------------------

def _half_extents(shape: str, r: int, tall: bool) -> tuple[int, int]:
    if shape == "rectangle":
        return (r // 2, r) if tall else (r, r // 2)
    if shape == "square":
        s = round(r * 0.85)
        return s, s
    return r, r


def _outline(o: dict) -> np.ndarray:
    """[K, 2] outline in pixels; polygons exactly as drawn, circles as 48 points on the rim."""
    cx, cy, r, shape = o["cx"], o["cy"], o["r"], o["shape"]
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.round(np.c_[cx + r * np.cos(t), cy + r * np.sin(t)], 6)  # the rim's extremes land on cx +- r exactly
    if shape in ("square", "rectangle"):
        hw, hh = _half_extents(shape, r, o["tall"])
        return np.array([[cx - hw, cy - hh], [cx + hw, cy - hh], [cx + hw, cy + hh], [cx - hw, cy + hh]], dtype=np.float64)
    if shape == "triangle":
        return np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]], dtype=np.float64)
    # star: 5 outer points on r, 5 inner on 0.45 r; rounded to ints as they are drawn
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return np.round(np.c_[cx + rad * np.cos(t), cy + rad * np.sin(t)])


def _inside(pts: np.ndarray, s: int) -> bool:
    return bool(pts.min() >= 1 and pts.max() <= s - 2)


def _background(bg: dict, s: int, rng: random.Random) -> Image.Image:
    if bg["kind"] == "plain":
        return Image.new("RGB", (s, s), tuple(bg["rgb"]))
    base = np.asarray(bg["rgb"], dtype=np.int16)
    if bg["kind"] == "gradient":
        t = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
        arr = base + (np.asarray(bg["rgb2"], dtype=np.float32) - base) * t
        arr = np.broadcast_to(arr, (s, s, 3))
    else:  # speckle: kept light, so no pixel can take a shape's colour
        noise = np.random.default_rng(rng.getrandbits(63)).integers(-bg["amp"], bg["amp"] + 1, (s, s, 1), dtype=np.int16)
        arr = base + noise
    return Image.fromarray(np.clip(arr, 200, 255).astype(np.uint8))


def _position_name(cx: float, cy: float, s: int) -> str:
    col = ["left", "", "right"][min(2, int(3 * cx / s))]
    row = ["top", "", "bottom"][min(2, int(3 * cy / s))]
    return f"{row} {col}".strip() or "centre"


def _describe(o: dict, objects: list[dict]) -> str:
    """The shortest description that fits this object alone (always exists: kinds are unique)."""
    for keys in (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape")):
        if sum(all(p[k] == o[k] for k in keys) for p in objects) == 1:
            return " ".join(o[k] for k in keys)
    raise AssertionError("duplicate object kinds")


def _colour_referents(objects: list[dict]) -> list[tuple[dict, str]]:
    """Objects that can be named without their colour (to ask for it), with that name."""
    out = []
    for o in objects:
        for keys in (("shape",), ("size", "shape")):
            if sum(all(p[k] == o[k] for k in keys) for p in objects) == 1:
                out.append((o, " ".join(o[k] for k in keys)))
                break
    return out


def _extreme(objects, rng, clear) -> QA | None:
    axis, words = rng.choice([(0, ("furthest to the left", "furthest to the right")), (1, ("at the top", "at the bottom"))])
    far = rng.random() < 0.5
    order = sorted(objects, key=lambda o: o["center"][axis], reverse=far)
    if abs(order[1]["center"][axis] - order[0]["center"][axis]) < clear / 2:
        return None
    o = order[0]
    return QA(f"Which shape is {words[int(far)]}?", o["shape"], "spatial", "exact",
              [f"{o['colour']} {o['shape']}", f"the {_describe(o, objects)}"],
              kind="extreme: left / right" if axis == 0 else "extreme: top / bottom")


RELATION_QUESTION = re.compile(r"^Is the (.+) (left of|right of|above|below) the (.+)\?$")


def grounded_relation(question: str, answer: str, objects: list[dict], say_side: bool = False,
                      places: str = "box") -> str | None:
    """A relation question's answer with its reasoning grounded first: both objects' boxes, then yes / no.

    vlmkit-smol answers "left of" at chance where the two shapes' order in its token raster disagrees with their
    columns, while its box head places boxes on both axes; written first, the boxes put the columns into the text the
    LM reads before it answers (Shikra's grounded reasoning). "the red circle <box>..</box> and the square
    <box>..</box>: no" reads as "no" under POPE's rule (a "no" word in the first sentence), so the yes / no metric
    is unchanged. " and" follows the first box, not ",", because SmolLM2's tokenizer merges ">," into one token,
    which the LM would never see after the box head's own "</box>" tokens. None for a question that is not a
    relation between two objects of `objects`.

    say_side (session 20) adds the step between the boxes and the answer: "... <box>..</box> so the red circle is
    left of the square: no", the side that the two centres show on the question's axis. Without it the yes / no is
    an XOR of two balanced features (which number is smaller, and which relation was asked), and no single one of
    them predicts the label, so a LoRA-tuned LM stays at chance (scripts/probe_box_comparison.py). Written out, each
    step depends on one thing: the side on the comparison, the answer on whether two phrases are the same. "so", a
    word, follows the box, since "</box>" followed by punctuation tokenizes differently from the head's own tokens.

    places="point" (session 22) writes each object's place as `<point>x,y</point>`, one digit an axis, instead of
    its box: in the text probe (scripts/probe_box_comparison.py --form digit) the side was learnt from digits in 50
    steps and from boxes in 200. The side is still the boxes' (the true one)."""
    m = RELATION_QUESTION.match(question.removeprefix("<image>\n").strip())
    if m is None or answer not in ("yes", "no"):
        return None
    named = {_describe(o, objects): o for o in objects}
    a, b = named.get(m.group(1)), named.get(m.group(3))
    if a is None or b is None:
        return None
    if places not in ("box", "point"):
        raise ValueError(f"places must be 'box' or 'point', not {places!r}")
    place = format_box if places == "box" else format_point
    boxes = f"the {m.group(1)} {place(a['box'])} and the {m.group(3)} {place(b['box'])}"
    if not say_side:
        return f"{boxes}: {answer}"
    return f"{boxes} so the {m.group(1)} is {box_side(a['box'], b['box'], m.group(2))} the {m.group(3)}: {answer}"


def relation_axis(relation: str) -> int:
    """The axis a relation compares on: 0 (x) for "left of" / "right of", 1 (y) for the others; the index into a
    point (x, y) and into a box's corners (x1, y1, x2, y2)."""
    return 0 if relation in ("left of", "right of") else 1


def box_side(box_a: list[int], box_b: list[int], relation: str) -> str:
    """Where box A is against box B on `relation`'s axis, from their centres: "left of" / "right of" for a left /
    right relation, "above" / "below" for the other."""
    axis = relation_axis(relation)
    before = box_a[axis] + box_a[axis + 2] < box_b[axis] + box_b[axis + 2]  # centres, doubled
    words = ("left of", "right of") if axis == 0 else ("above", "below")
    return words[0] if before else words[1]


def _where(position: str) -> str:
    if position == "centre":
        return "in the centre"
    return f"on the {position}" if position in ("left", "right") else f"at the {position}"


def _caption(objects: list[dict], bg: str, s: int) -> str:
    order = sorted(objects, key=lambda o: (int(3 * o["center"][1] / s), o["center"][0]))  # reading order by grid row
    parts = [f"a {o['size']} {o['colour']} {o['shape']} {_where(o['position'])}" for o in order]
    n = len(objects)
    head = f"{NUMBER_WORDS[n].capitalize()} shape{'s' if n > 1 else ''} on a {bg} background: "
    body = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return head + body + "."
