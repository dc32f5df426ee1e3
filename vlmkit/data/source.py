"""Map-style datasets over the generators: `len()` and `source[i]`, so torch DataLoader can use them as they are.

Sample i of (source, split, seed) is a pure function of those four values.
The generator first draws a cheap *spec* (the layout, the word, the values);
the spec's content key decides its split (see seeding.py), and a spec that
belongs to another split is redrawn from the next attempt's seed. Only then is
the image rendered, so rejection costs microseconds, not renders.
"""
from __future__ import annotations

import random
from typing import Iterator, Protocol

from PIL import Image

from .sample import QA, DataError, Sample
from .seeding import check_split, derive_seed, split_of_key

MAX_ATTEMPTS = 10_000  # test and val own 10% of keys each: 10 draws on average


class Generator(Protocol):
    name: str  # also the namespace of its split keys, so a shape scene has one split whichever source draws it
    slices: tuple[str, ...]

    def spec(self, rng: random.Random) -> dict: ...

    def split_key(self, spec: dict) -> str: ...

    def build(self, spec: dict, rng: random.Random) -> tuple[Image.Image, dict, str, list[QA]]:
        """-> (image, truth, caption, question/answer pairs)"""


class SyntheticSource:
    """Samples from one generator, or a weighted mixture of several (the visual worlds)."""

    def __init__(self, name: str, generators: dict[str, tuple[Generator, float]], split: str = "train",
                 seed: int = 0, n: int = 1000):
        if n < 0:
            raise DataError(f"n must be >= 0, not {n}")
        self.name, self.split, self.seed, self.n = name, check_split(split), int(seed), int(n)
        if any(key != gen.name for key, (gen, _) in generators.items()):
            raise ValueError("generators must be keyed by their own name (it namespaces their split keys)")
        self.generators = generators
        self._names = list(generators)
        self._weights = [w for _, w in generators.values()]

    @property
    def slices(self) -> list[str]:
        out: list[str] = []
        for gen, _ in self.generators.values():
            out += [s for s in gen.slices if s not in out]
        return out

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.n):
            yield self[i]

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        gen = self.pick(i)
        for attempt in range(MAX_ATTEMPTS):
            seed = derive_seed(self.name, gen.name, self.split, self.seed, i, attempt)
            spec = gen.spec(random.Random(seed))
            if split_of_key(f"{gen.name}|{gen.split_key(spec)}") == self.split:
                break
        else:  # only a generator with a tiny key space could get here
            raise DataError(f"{gen.name}: no {self.split} sample after {MAX_ATTEMPTS} draws")
        image, truth, caption, qa = gen.build(spec, random.Random(derive_seed(seed, "build")))
        truth = {"generator": gen.name, **truth}
        return Sample(id=f"{self.name}-{self.split}-s{self.seed}-{i:06d}", image=image, caption=caption, qa=qa,
                      truth=truth, source=self.name, split=self.split, seed=seed)

    def pick(self, i: int) -> Generator:
        if len(self._names) == 1:
            return self.generators[self._names[0]][0]
        rng = random.Random(derive_seed(self.name, "pick", self.split, self.seed, i))
        return self.generators[rng.choices(self._names, weights=self._weights)[0]][0]

    def key_of(self, sample: Sample) -> str:
        """The content key of an already drawn sample (re-drawn from its seed; for tests and audits)."""
        gen = self.generators[sample.truth["generator"]][0]
        return f"{gen.name}|{gen.split_key(gen.spec(random.Random(sample.seed)))}"
