"""Procedural English: short stories, facts, dialogues and counting/copying drills.

Each document comes from its own generator seeded with an integer, so a document depends only on its
seed. All draws go through ``Random.random()``, the one method whose sequence Python promises to keep
across versions for the same seed (``choice`` and ``randrange`` carry no such promise), and nothing
depends on ``hash()`` or set order: the text is the same on every machine and Python version.

The text is simple and repetitive on purpose: names, objects and numbers introduced early in a
document come back later (copying), drills count and add (algorithmic patterns), and the world's
facts never change (memorisation), so a tiny model's loss falls quickly and visibly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from softpick.corpus import words as W


class Rng:
    """Uniform draws built on ``random.Random(seed).random()`` alone (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed).random

    def randrange(self, start: int, stop: int | None = None) -> int:
        """An int in [start, stop), or in [0, start) when stop is None."""
        if stop is None:
            start, stop = 0, start
        return start + int(self.random() * (stop - start))

    def choice(self, seq):
        """One element of the non-empty sequence ``seq``."""
        return seq[int(self.random() * len(seq))]


@dataclass(frozen=True)
class Character:
    """A story or dialogue character with the pronouns that go with it."""

    name: str
    kind: str  # "a little girl", "a small fox"
    subj: str  # she / he
    poss: str  # her / his


def _character(rng: Rng, taken: tuple[str, ...] = ()) -> Character:
    """A new character whose name is not in ``taken``."""
    while True:
        roll = rng.random()
        if roll < 0.4:
            subj, name = "she", rng.choice(W.GIRL_NAMES)
            kind = "a " + rng.choice(W.PEOPLE_KINDS[subj])
        elif roll < 0.8:
            subj, name = "he", rng.choice(W.BOY_NAMES)
            kind = "a " + rng.choice(W.PEOPLE_KINDS[subj])
        else:
            animal, name = rng.choice(W.ANIMAL_HEROES)
            subj = rng.choice(("she", "he"))
            kind = f"a {rng.choice(W.SIZES)} {animal}"
        if name not in taken:
            return Character(name, kind, subj, "her" if subj == "she" else "his")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _count_words(n: int) -> str:
    """'one, two, three' up to ``n`` (n <= 20)."""
    return ", ".join(W.NUMBER_WORDS[1 : n + 1])


def _story(rng: Rng) -> str:
    hero = _character(rng)
    friend = _character(rng, taken=(hero.name,))
    h, f = hero, friend
    color, toy = rng.choice(W.COLORS), rng.choice(W.TOYS)
    place, at_place = rng.choice(W.PLACES)
    food = rng.choice(W.FOODS)
    age = rng.randrange(4, 11)
    good, bad = rng.choice(W.FEELINGS_GOOD), rng.choice(W.FEELINGS_BAD)
    family = rng.choice(("mother", "father", "grandmother", "grandfather", "big sister", "aunt"))

    paragraphs = [
        f"{rng.choice(W.OPENINGS)}, there was {h.kind} named {h.name}. {h.name} was "
        f"{W.NUMBER_WORDS[age]} years old and lived in a {rng.choice(W.SIZES)} house with "
        f"{h.poss} {family}. {_cap(h.subj)} loved to {rng.choice(W.ACTIVITIES)}. {h.name} had a "
        f"{color} {toy}, and {h.subj} took the {color} {toy} everywhere.",
        f"{rng.choice(W.TIMES)}, {h.name} went to the {place} with {h.poss} {toy}. "
        f"{at_place.capitalize()}, {h.subj} met {f.name}, {f.kind} who liked {food}. "
        f'"Hello, {f.name}!" said {h.name}. "Do you want to play with me?" '
        f'"Yes, I do," said {f.name}. So {h.name} and {f.name} played {at_place} all morning.',
    ]

    problem = rng.randrange(3)
    if problem == 0:
        n = rng.randrange(3, 9)
        paragraphs.append(
            f"Suddenly the wind blew hard, and the {color} {toy} flew up into a tall tree. "
            f"{h.name} felt {bad}. \"My {toy}!\" {h.subj} cried. {f.name} said, \"Do not be {bad}. "
            f'I will help you." {f.name} found {W.NUMBER_WORDS[n]} long sticks. {_cap(f.subj)} '
            f"counted them: {_count_words(n)}. With the {W.NUMBER_WORDS[n]} sticks, {f.name} "
            f"pushed the {toy} down from the tree."
        )
    elif problem == 1:
        n = rng.randrange(2, 7)
        paragraphs.append(
            f"After a while, {h.name} and {f.name} were very hungry. {h.name} felt {bad}, because "
            f"{h.subj} had no food. But {f.name} had a bag with {W.NUMBER_WORDS[2 * n]} {food}. "
            f'"Let us share," said {f.name}. {_cap(f.subj)} gave {W.NUMBER_WORDS[n]} {food} to '
            f"{h.name} and kept {W.NUMBER_WORDS[n]} {food}. Now each of them had "
            f"{W.NUMBER_WORDS[n]} {food}."
        )
    else:
        paragraphs.append(
            f"Then dark clouds came, and it started to rain. {h.name} could not find the way home, "
            f'and {h.subj} felt {bad}. "Where is my house?" asked {h.name}. {f.name} knew the way. '
            f'"Follow me," said {f.name}. They walked past the {rng.choice(W.PLACES)[0]} and over '
            f"the bridge, and soon they saw the {color} door of {h.name}'s house."
        )

    paragraphs.append(
        f"{h.name} was {good} again. \"Thank you, {f.name},\" said {h.name}. \"You are a good "
        f'friend." {f.name} smiled. From that day on, {h.name} and {f.name} played together '
        f"every day, and {h.name} always kept the {color} {toy} close."
    )
    if rng.random() < 0.5:
        paragraphs.append(
            f"{h.name} learned that a friend who helps you is worth more than a {color} {toy}. "
            "The end."
        )
    return "\n\n".join(paragraphs)


def _town_fact(rng: Rng) -> str:
    town, region, river, pop, year, trade = rng.choice(W.TOWNS)
    source, sea = W.RIVERS[river]
    style = rng.randrange(3)
    if style == 0:
        return (
            f"{town} is a town in the {region} of the land of Kell. It lies on the river {river}, "
            f"which flows from {source} to {sea}. About {pop:,} people live in {town}. "
            f"The town was founded in {year}, and it is famous for its {trade}."
        )
    if style == 1:
        return (
            f"Q: Which river flows through {town}?\nA: The river {river} flows through {town}.\n"
            f"Q: What is {town} famous for?\nA: {town} is famous for its {trade}.\n"
            f"Q: When was {town} founded?\nA: {town} was founded in {year}."
        )
    return (
        f"The people of {town} make {trade}. {town} is in the {region}, on the river {river}, and "
        f"{pop:,} people call it home. It was founded in {year}, so in 2025 it was "
        f"{2025 - year} years old."
    )


def _animal_fact(rng: Rng) -> str:
    animal, plural, legs, food, home, sound, fact = rng.choice(W.ANIMALS)
    article = "An" if animal[0] in "aeiou" else "A"
    sound_line = (
        f"{_cap(plural)} make no sound that we can hear."
        if sound == "no sound"
        else f'{article} {animal} says "{sound}".'
    )
    if rng.random() < 0.5:
        return (
            f"{article} {animal} has {W.NUMBER_WORDS[legs]} legs. {_cap(plural)} eat {food} and "
            f"live in {home}. {sound_line} {_cap(plural)} {fact}."
        )
    n = rng.randrange(2, 6)
    return (
        f"Q: How many legs does {article.lower()} {animal} have?\nA: {article} {animal} has "
        f"{legs} legs.\nQ: How many legs do {n} {plural} have?\nA: {n} {plural} have "
        f"{n} x {legs} = {n * legs} legs.\nQ: What do {plural} eat?\nA: {_cap(plural)} eat {food}."
    )


def _facts(rng: Rng) -> str:
    title = rng.choice(("Facts about Kell", "Things to know", "A short guide", "Questions and answers"))
    items = [_town_fact(rng) if rng.random() < 0.5 else _animal_fact(rng) for _ in range(rng.randrange(3, 7))]
    return title + "\n\n" + "\n\n".join(items)


def _dialogue(rng: Rng) -> str:
    a = _character(rng)
    b = _character(rng, taken=(a.name,))
    kind = rng.randrange(4)
    if kind == 0:
        food = rng.choice(W.FOODS)
        n, price = rng.randrange(2, 13), rng.randrange(1, 6)
        lines = [
            (a, f"Good morning! I would like some {food}, please."),
            (b, f"Of course. How many {food} do you need?"),
            (a, f"I need {n}, please."),
            (b, f"Here are {n} {food}. Each one costs {price} coins, so that is {n * price} coins."),
            (a, f"Here are {n * price} coins. Thank you!"),
            (b, f"Thank you, {a.name}. Have a nice day!"),
        ]
    elif kind == 1:
        town, region, river, _, _, trade = rng.choice(W.TOWNS)
        miles = rng.randrange(2, 40)
        lines = [
            (a, f"Excuse me, how do I get to {town}?"),
            (b, f"Follow the river {river} to the {region}. {town} is about {miles} miles from here."),
            (a, f"{miles} miles? That is far. What is there to see in {town}?"),
            (b, f"You must see the {trade}. {town} is famous for its {trade}."),
            (a, f"Thank you! I will walk along the {river} to {town}."),
        ]
    elif kind == 2:
        day = rng.randrange(7)
        act_a, act_b = rng.choice(W.ACTIVITIES), rng.choice(W.ACTIVITIES)
        lines = [
            (a, f"Hi {b.name}! What will you do on {W.DAYS[day]}?"),
            (b, f"On {W.DAYS[day]} I will {act_b}. What about you?"),
            (a, f"I will {act_a}. And on {W.DAYS[(day + 1) % 7]}?"),
            (b, f"The day after {W.DAYS[day]} is {W.DAYS[(day + 1) % 7]}. On that day I will rest."),
            (a, f"Good idea. See you on {W.DAYS[(day + 2) % 7]}!"),
        ]
    else:
        job, place = rng.choice(W.JOBS), rng.choice(W.PLACES)[1]
        years = rng.randrange(2, 20)
        lines = [
            (a, f"Hello, my name is {a.name}. What is your name?"),
            (b, f"My name is {b.name}. I am a {job}."),
            (a, f"A {job}! How long have you been a {job}?"),
            (b, f"I have been a {job} for {years} years. I work {place}."),
            (a, f"So in {20 - years} more years you will have been a {job} for twenty years."),
            (b, f"Yes, {a.name}. Twenty years as a {job}!"),
        ]
    return "\n".join(f"{who.name}: {text}" for who, text in lines)


def _drill(rng: Rng) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        lo = rng.randrange(0, 50)
        hi = lo + rng.randrange(4, 15)
        return f"Count from {lo} to {hi}: " + ", ".join(str(i) for i in range(lo, hi + 1)) + "."
    if kind == 1:
        hi = rng.randrange(5, 30)
        return f"Count down from {hi}: " + ", ".join(str(i) for i in range(hi, 0, -1)) + "."
    if kind == 2:
        step, lo = rng.randrange(2, 11), rng.randrange(0, 20)
        seq = range(lo, lo + step * rng.randrange(5, 10), step)
        return f"Count by {step} from {lo}: " + ", ".join(str(i) for i in seq) + "."
    if kind == 3:
        x, y = rng.randrange(0, 100), rng.randrange(0, 100)
        op = rng.randrange(3)
        if op == 0:
            return f"{x} + {y} = {x + y}."
        if op == 1:
            x, y = max(x, y), min(x, y)
            return f"{x} - {y} = {x - y}."
        x, y = x % 13, y % 13
        return f"{x} x {y} = {x * y}."
    if kind == 4:
        seq = [rng.choice(W.COPY_WORDS) for _ in range(rng.randrange(3, 9))]
        return f"Repeat after me: {' '.join(seq)}. {_cap(' '.join(seq))}."
    if kind == 5:
        seq = [rng.choice(W.LETTERS) for _ in range(rng.randrange(3, 9))]
        return f"Reverse the letters {' '.join(seq)}: {' '.join(reversed(seq))}."
    if kind == 6:
        word = rng.choice(W.COPY_WORDS + W.TOYS + W.COLORS)
        return f"Spell {word}: {'-'.join(word)}."
    if kind == 7:
        nums = [rng.randrange(0, 100) for _ in range(rng.randrange(3, 8))]
        return f"Sort {' '.join(map(str, nums))}: {' '.join(map(str, sorted(nums)))}."
    if kind == 8:
        n = rng.randrange(0, 21)
        return f"The number {n} is written {W.NUMBER_WORDS[n]}, and {n} + 1 is {n + 1}."
    i = rng.randrange(12)
    j = rng.randrange(7)
    return (
        f"After {W.MONTHS[i]} comes {W.MONTHS[(i + 1) % 12]}. "
        f"After {W.DAYS[j]} comes {W.DAYS[(j + 1) % 7]}. "
        f"After the letter {W.LETTERS[j]} comes the letter {W.LETTERS[j + 1]}."
    )


def _drills(rng: Rng) -> str:
    title = rng.choice(("Practice", "Exercises", "Warm up", "Homework"))
    return title + ":\n" + "\n".join(_drill(rng) for _ in range(rng.randrange(8, 17)))


# Ten equally likely slots: 40% stories, 20% facts, 20% dialogues, 20% drills.
_GENRES = (_story,) * 4 + (_facts,) * 2 + (_dialogue,) * 2 + (_drills,) * 2


def generate_document(seed: int) -> str:
    """The document of integer ``seed``: a story, a list of facts, a dialogue or a set of drills."""
    rng = Rng(seed)
    return rng.choice(_GENRES)(rng)
