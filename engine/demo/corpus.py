"""Seeded synthetic chat corpus for the built-in demo model, with a held-out evaluation split.

Every skill is small enough for a ~1.6 M-parameter DiffusionGemma to learn near-perfectly on a
CPU. Held-out questions never appear in training: for fact skills (capitals, colours, sums) one
phrasing per fact is held out, for word skills specific word lists are held out, and for the
questions about the demo itself whole paraphrases are held out.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

# --- facts ---------------------------------------------------------------------------------

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Russia", "Moscow"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Turkey", "Ankara"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Australia", "Canberra"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Cuba", "Havana"),
    ("Colombia", "Bogota"), ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"),
    ("Switzerland", "Bern"), ("Ukraine", "Kyiv"), ("the United Kingdom", "London"),
    ("Morocco", "Rabat"), ("Ghana", "Accra"),
]

CAPITAL_QUESTIONS = [
    "What is the capital of {c}?",
    "What's the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital of {c}.",
    "Tell me the capital of {c}.",
    "Do you know the capital of {c}?",
    "capital of {c}?",
    "What city is the capital of {c}?",
]

# (thing as asked, thing as the answer's subject, colour)
THINGS = [
    ("a banana", "A banana", "yellow"), ("grass", "Grass", "green"), ("the sky", "The sky", "blue"),
    ("snow", "Snow", "white"), ("coal", "Coal", "black"), ("a tomato", "A tomato", "red"),
    ("a lemon", "A lemon", "yellow"), ("a carrot", "A carrot", "orange"), ("milk", "Milk", "white"),
    ("a cherry", "A cherry", "red"), ("a frog", "A frog", "green"), ("chocolate", "Chocolate", "brown"),
    ("a pumpkin", "A pumpkin", "orange"), ("the sun", "The sun", "yellow"), ("a leaf", "A leaf", "green"),
    ("an elephant", "An elephant", "grey"), ("a crow", "A crow", "black"), ("blood", "Blood", "red"),
    ("a lime", "A lime", "green"), ("a plum", "A plum", "purple"), ("the sea", "The sea", "blue"),
    ("a flamingo", "A flamingo", "pink"), ("a pig", "A pig", "pink"), ("soil", "Soil", "brown"),
    ("a mouse", "A mouse", "grey"), ("an aubergine", "An aubergine", "purple"),
    ("a strawberry", "A strawberry", "red"), ("a polar bear", "A polar bear", "white"),
]

COLOUR_QUESTIONS = [
    "What colour is {t}?",
    "What color is {t}?",
    "Which colour is {t}?",
    "Tell me the colour of {t}.",
    "What is the colour of {t}?",
    "What colour is {t} usually?",
]

COLOUR_MIXES = [
    ("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple"),
    ("red", "white", "pink"), ("black", "white", "grey"),
]

MIX_QUESTIONS = [
    "What do you get if you mix {a} and {b}?",
    "What colour do {a} and {b} make?",
    "What color do {a} and {b} make?",
    "Mix {a} and {b}: what colour?",
    "What happens when you mix {a} and {b}?",
    "If I mix {a} and {b}, what colour do I get?",
]

WORDS = [
    "cat", "dog", "sun", "moon", "tree", "book", "fish", "bird", "cup", "pen", "hat", "car",
    "box", "key", "door", "star", "rain", "milk", "egg", "bus", "ship", "frog", "lamp", "bell",
    "apple", "house", "river", "stone", "cloud", "bread", "chair", "table", "green", "blue",
    "red", "one", "two", "three", "king", "queen", "snow", "wind", "fire", "ice", "road", "hill",
]

REVERSE_QUESTIONS = [
    "Reverse these words: {w}",
    "Reverse the words: {w}",
    "Reverse: {w}",
    "Say these words backwards: {w}",
    "Put these words in reverse order: {w}",
]

COUNT_QUESTIONS = [
    "How many words are in: {w}",
    "Count the words: {w}",
    "How many words: {w}",
    "Count these words: {w}",
]

ADD_QUESTIONS = [
    "What is {a} + {b}?",
    "What is {a} plus {b}?",
    "{a} + {b} = ?",
    "Add {a} and {b}.",
    "How much is {a} + {b}?",
]

# --- questions about the demo itself -------------------------------------------------------

SELF_ANSWERS = {
    "identity": (
        "I am the tiny built-in demo model of Canvas Chat. I know only toy skills: capitals, "
        "colours, reversing and counting words, and small sums."
    ),
    "abilities": (
        "I can name capitals, tell colours, reverse or count words and add small numbers. "
        "I am only a tiny demo, so I know nothing else."
    ),
    "real_model": (
        "Open the Model setup screen and download DiffusionGemma 26B-A4B. It is the real model; "
        "I am only a tiny demo."
    ),
    "greeting": (
        "Hello! I am the tiny demo model of Canvas Chat. I can name capitals, tell colours, "
        "reverse or count words and add small numbers."
    ),
}

# intent -> (training phrasings, held-out phrasings)
SELF_QUESTIONS = {
    "identity": (
        [
            "Who are you?", "who are you", "What are you?", "what are you?", "Tell me who you are.",
            "Who am I talking to?", "What model are you?", "Which model are you?",
            "Introduce yourself.", "Are you a real model?", "What is this model?",
            "Who are you exactly?", "Tell me about yourself.", "Are you DiffusionGemma?",
        ],
        ["Who exactly are you?", "What model is this?", "Please introduce yourself."],
    ),
    "abilities": (
        [
            "What can you do?", "what can you do", "What can you do for me?", "What are your skills?",
            "What do you know?", "What are you good at?", "What can I ask you?",
            "Which skills do you have?", "What can you help me with?", "What questions can you answer?",
            "What do you know about?", "Tell me what you can do.",
        ],
        ["What skills do you have?", "What can I ask?", "Tell me your skills."],
    ),
    "real_model": (
        [
            "How do I get the real model?", "how do i get the real model", "Where is the real model?",
            "How can I download the real model?", "How do I download DiffusionGemma?",
            "I want the real model.", "How do I get the full model?", "Where can I get a bigger model?",
            "How do I get a better model?", "How do I install DiffusionGemma 26B-A4B?",
            "Can I use the full DiffusionGemma?", "Where do I download the real model?",
        ],
        ["How can I get the real model?", "Where can I download DiffusionGemma?", "I want the full model."],
    ),
    "greeting": (
        ["Hello", "Hello!", "Hi", "Hi!", "hi", "hello", "Hey", "Hey!", "Good morning!", "Hi there!"],
        # Held out: the first three since the first model; the rest since greetings small talk
        # came in (GREETING_SMALL_TALK below), none of them a trivial variant of a training one.
        ["Hello there!", "Hey there!", "Hi, how are you?", "Good evening!", "Hey, what's new?",
         "Hello, how have you been?"],
    ),
}

# Greetings and small talk: users very often open a chat with one. These training phrasings come
# on top of the greeting phrasings above, from their own interleaved stream (see
# `training_examples`), so that every other generated example stays identical for a seed.
# "how are you" appears only inside longer questions, never as "Hi, how are you?" (held out).
GREETING_SMALL_TALK = [
    "Good morning", "Good morning.", "Good afternoon!", "Morning!", "Hiya!", "Howdy!",
    "Greetings!", "Yo!", "Hey hey!", "Hello hello!", "Hi Canvas Chat!", "Hello, Canvas Chat!",
    "Hey, how's it going?", "How's it going?", "How do you do?", "Hello, how do you do?",
    "How are you doing today?", "How are you today?", "Hey, how are you doing?", "How are things?",
    "Hi! How are things?", "What's up?", "Hey, what's up?", "Nice to meet you!",
    "Hello, nice to meet you.", "Hi, nice to meet you!", "Good to see you!", "Anyone there?",
    "Hello? Is anyone there?", "Hey, how have you been?", "Hi, how is your day?",
    "Good day!", "Hi again!", "Hello again!", "Hey, good morning!",
]
GREETING_RATE = 0.05  # greetings interleaved per regular training example

SKILLS = ("capitals", "colours", "reverse", "count", "add", "self")


@dataclass(frozen=True)
class Example:
    """One question and its right answer, optionally as the last turn of a chat whose earlier
    (question, answer) turns are all answered right."""

    skill: str
    question: str
    answer: str
    history: tuple[tuple[str, str], ...] = ()

    def messages(self) -> list[dict[str, str]]:
        """The chat up to this question, as the engine passes it to the chat template."""
        out: list[dict[str, str]] = []
        for question, answer in self.history:
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return out + [{"role": "user", "content": self.question}]


def _held_out_index(key: str, n: int, salt: int = 0) -> int:
    """A fixed phrasing index per fact, independent of Python's hash randomisation."""
    return (sum((i + 1) * ord(ch) for i, ch in enumerate(key)) + salt) % n


def _join(words) -> str:
    return " ".join(words)


def count_answer(n: int) -> str:
    return "There is 1 word." if n == 1 else f"There are {n} words."


# Word lists held out of training: drawn once from a fixed seed, so every run agrees.
_HELD_OUT_LIST_SEED = 20260527
_REVERSE_LENGTHS = (2, 6)
_COUNT_LENGTHS = (1, 8)


def _held_out_lists(skill: str, count: int, lengths: tuple[int, int]) -> list[tuple[str, ...]]:
    rng = random.Random(f"{_HELD_OUT_LIST_SEED}-{skill}")
    lists: list[tuple[str, ...]] = []
    while len(lists) < count:
        words = tuple(rng.choice(WORDS) for _ in range(rng.randint(*lengths)))
        if words not in lists:
            lists.append(words)
    return lists


HELD_OUT_REVERSE = _held_out_lists("reverse", 60, _REVERSE_LENGTHS)
HELD_OUT_COUNT = _held_out_lists("count", 60, _COUNT_LENGTHS)
_HELD_OUT_WORD_LISTS = set(HELD_OUT_REVERSE) | set(HELD_OUT_COUNT)


def held_out_examples() -> list[Example]:
    """The evaluation questions; none of them is ever produced by `training_examples`."""
    out: list[Example] = []
    for country, capital in CAPITALS:
        q = CAPITAL_QUESTIONS[_held_out_index(country, len(CAPITAL_QUESTIONS))]
        out.append(Example("capitals", q.format(c=country), f"The capital of {country} is {capital}."))
    for thing, subject, colour in THINGS:
        q = COLOUR_QUESTIONS[_held_out_index(thing, len(COLOUR_QUESTIONS))]
        out.append(Example("colours", q.format(t=thing), f"{subject} is {colour}."))
    for a, b, c in COLOUR_MIXES:
        for x, y in ((a, b), (b, a)):
            q = MIX_QUESTIONS[_held_out_index(x + y, len(MIX_QUESTIONS))]
            out.append(Example("colours", q.format(a=x, b=y), f"{x.capitalize()} and {y} make {c}."))
    for i, words in enumerate(HELD_OUT_REVERSE):
        q = REVERSE_QUESTIONS[i % len(REVERSE_QUESTIONS)]
        out.append(Example("reverse", q.format(w=_join(words)), _join(reversed(words))))
    for i, words in enumerate(HELD_OUT_COUNT):
        q = COUNT_QUESTIONS[i % len(COUNT_QUESTIONS)]
        out.append(Example("count", q.format(w=_join(words)), count_answer(len(words))))
    for a in range(10):
        for b in range(10):
            q = ADD_QUESTIONS[_held_out_index(f"{a}+{b}", len(ADD_QUESTIONS), salt=a)]
            out.append(Example("add", q.format(a=a, b=b), f"{a} + {b} = {a + b}."))
    for intent, (_, held_out) in SELF_QUESTIONS.items():
        for q in held_out:
            out.append(Example("self", q, SELF_ANSWERS[intent]))
    return out


def _maybe_lower(rng: random.Random, question: str) -> str:
    # Casual typing: some training questions arrive lower-cased or without the final mark.
    r = rng.random()
    if r < 0.1:
        return question.lower()
    if r < 0.2 and question[-1:] in "?.":
        return question[:-1]
    return question


def _sample(rng: random.Random, skill: str) -> Example:
    if skill == "capitals":
        country, capital = rng.choice(CAPITALS)
        held = _held_out_index(country, len(CAPITAL_QUESTIONS))
        q = rng.choice([t for i, t in enumerate(CAPITAL_QUESTIONS) if i != held])
        return Example(skill, q.format(c=country), f"The capital of {country} is {capital}.")
    if skill == "colours":
        if rng.random() < 0.7:
            thing, subject, colour = rng.choice(THINGS)
            held = _held_out_index(thing, len(COLOUR_QUESTIONS))
            q = rng.choice([t for i, t in enumerate(COLOUR_QUESTIONS) if i != held])
            return Example(skill, q.format(t=thing), f"{subject} is {colour}.")
        a, b, c = rng.choice(COLOUR_MIXES)
        x, y = (a, b) if rng.random() < 0.5 else (b, a)
        held = _held_out_index(x + y, len(MIX_QUESTIONS))
        q = rng.choice([t for i, t in enumerate(MIX_QUESTIONS) if i != held])
        return Example(skill, q.format(a=x, b=y), f"{x.capitalize()} and {y} make {c}.")
    if skill in ("reverse", "count"):
        lengths = _REVERSE_LENGTHS if skill == "reverse" else _COUNT_LENGTHS
        while True:
            words = tuple(rng.choice(WORDS) for _ in range(rng.randint(*lengths)))
            if words not in _HELD_OUT_WORD_LISTS:
                break
        if skill == "reverse":
            q = rng.choice(REVERSE_QUESTIONS)
            return Example(skill, q.format(w=_join(words)), _join(reversed(words)))
        q = rng.choice(COUNT_QUESTIONS)
        return Example(skill, q.format(w=_join(words)), count_answer(len(words)))
    if skill == "add":
        a, b = rng.randrange(10), rng.randrange(10)
        held = _held_out_index(f"{a}+{b}", len(ADD_QUESTIONS), salt=a)
        q = rng.choice([t for i, t in enumerate(ADD_QUESTIONS) if i != held])
        return Example(skill, q.format(a=a, b=b), f"{a} + {b} = {a + b}.")
    if skill == "self":
        intent = rng.choice(list(SELF_QUESTIONS))
        return Example(skill, rng.choice(SELF_QUESTIONS[intent][0]), SELF_ANSWERS[intent])
    raise ValueError(f"unknown skill {skill!r}")


# How often each skill is drawn: word skills have the most instances to generalise over.
SKILL_WEIGHTS = {"capitals": 0.6, "colours": 0.8, "reverse": 2.5, "count": 1.2, "add": 1.2, "self": 0.7}


def training_examples(seed: int, skills=SKILLS) -> Iterator[Example]:
    """An endless, seeded stream of training examples; never yields a held-out question."""
    rng = random.Random(seed)
    # Greetings small talk draws from its own generator, so the main stream is unchanged by it.
    greeting_rng = random.Random(f"{seed}-greetings")
    greetings = SELF_QUESTIONS["greeting"][0] + GREETING_SMALL_TALK
    names = [s for s in SKILL_WEIGHTS if s in skills]
    weights = [SKILL_WEIGHTS[s] for s in names]
    held_out = {e.question for e in held_out_examples()}
    held_out_loose = {_loose(q) for q in held_out}
    while True:
        if "self" in skills and greeting_rng.random() < GREETING_RATE:
            question = _maybe_lower(greeting_rng, greeting_rng.choice(greetings))
            if _loose(question) not in held_out_loose:
                yield Example("self", question, SELF_ANSWERS["greeting"])
        example = _sample(rng, rng.choices(names, weights)[0])
        question = _maybe_lower(rng, example.question)
        if question in held_out:
            continue
        yield Example(example.skill, question, example.answer)


# Multi-turn chats: a follow-up must be answered as well as a first question. Earlier turns come
# from the same training stream (so they are never held out), with their right answers.
MULTI_TURN_RATE = 0.6
MAX_PRIOR_TURNS = 6


def training_chats(seed: int, multi_turn_rate: float = MULTI_TURN_RATE, skills=SKILLS) -> Iterator[Example]:
    """An endless, seeded stream of single questions and chats of 1 to MAX_PRIOR_TURNS earlier
    turns with the question last; no turn of any of them is a held-out question."""
    stream = training_examples(seed, skills)
    rng = random.Random(f"{seed}-chats")
    while True:
        example = next(stream)
        if rng.random() >= multi_turn_rate:
            yield example
            continue
        # Short chats more often (weight 1/k for k earlier turns): every chat teaches the same
        # thing, answer the last question, and a long one costs a CPU step several times more.
        turns = rng.choices(range(1, MAX_PRIOR_TURNS + 1), [1 / k for k in range(1, MAX_PRIOR_TURNS + 1)])[0]
        prior = tuple((e.question, e.answer) for e in (next(stream) for _ in range(turns)))
        yield Example(example.skill, example.question, example.answer, prior)


def held_out_chats(turn: int) -> list[Example]:
    """Every held-out question as the `turn`-th question of a chat (turn 1: asked alone). The
    earlier turns are other held-out questions and training questions, with their right answers,
    fixed for every run."""
    held_out = held_out_examples()
    if turn <= 1:
        return held_out
    fillers = training_examples(_HELD_OUT_LIST_SEED)
    out = []
    for i, example in enumerate(held_out):
        rng = random.Random(f"{_HELD_OUT_LIST_SEED}-chat-{turn}-{i}")
        prior = []
        for _ in range(turn - 1):
            if rng.random() < 0.5:
                other = held_out[rng.choice([j for j in range(len(held_out)) if j != i])]
            else:
                other = next(fillers)
            prior.append((other.question, other.answer))
        out.append(Example(example.skill, example.question, example.answer, tuple(prior)))
    return out


def _loose(question: str) -> str:
    """A question up to case, final punctuation and commas: 'hi how are you' is 'Hi, how are you?'."""
    return question.lower().replace(",", "").rstrip("?.!").strip()


def tokenizer_texts() -> list[str]:
    """Text to train the BPE on: every phrasing, fact and word, held-out questions included
    (the tokenizer learning a word's spelling is not the model learning the answer)."""
    texts = [q for q in CAPITAL_QUESTIONS + COLOUR_QUESTIONS + MIX_QUESTIONS + REVERSE_QUESTIONS]
    texts += COUNT_QUESTIONS + ADD_QUESTIONS + list(SELF_ANSWERS.values())
    for phrasings, held_out in SELF_QUESTIONS.values():
        texts += phrasings + held_out
    texts += [f"The capital of {c} is {cap}." for c, cap in CAPITALS]
    texts += [f"{s} is {col}." for _, s, col in THINGS]
    texts += [f"{a.capitalize()} and {b} make {c}." for a, b, c in COLOUR_MIXES]
    texts += [count_answer(1), count_answer(2)]
    # Repeat so the merges favour this corpus' words over rare byte pairs; the word-skill words
    # come often, with and without a leading space, so each becomes one token in both forms
    # (copying whole tokens is what a tiny model learns fastest).
    return texts * 3 + [" ".join(WORDS)] * 40 + list(WORDS) * 40
