"""The task definitions: 68 short checkable skills in six families.

Inputs stay under ~60 tokens and answers are a few tokens, so a 135M model can learn them on a CPU. Every
task has three hand-written description cores; see :mod:`memory.training.tasks.base` for how they become
paraphrases. Held-out tasks are listed in :data:`HELD_OUT`; most have a sibling in training (``last_word`` vs
``first_word``, ``kebab_case`` vs ``snake_case``), which is the zero-shot setting a hypernetwork can hope to
generalise to.
"""

from __future__ import annotations

import json
import random
from typing import Callable

from memory.training.tasks.base import Example, Task, normalise_answer
from memory.training.tasks.words import (
    ANIMALS,
    CITIES,
    COLORS,
    DOMAINS,
    FRUITS,
    NAMES,
    NEGATIVE,
    NUMBER_WORDS,
    POSITIVE,
    THINGS,
    TLDS,
    TOPICS,
    VOWELS,
    WORDS,
)

Maker = Callable[[random.Random], tuple[str, str]]


def _phrase(rng: random.Random, lo: int = 3, hi: int = 5) -> list[str]:
    return rng.sample(WORDS, rng.randint(lo, hi))


def _numbers(rng: random.Random, lo: int = 3, hi: int = 6, top: int = 99) -> list[int]:
    return rng.sample(range(1, top + 1), rng.randint(lo, hi))


def _roman(n: int) -> str:
    out = ""
    for value, sym in ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= value:
            out += sym
            n -= value
    return out


# ------------------------------------------------------------------ makers (rng -> (input, gold))
def m_extract_email(rng: random.Random) -> tuple[str, str]:
    name, dom = rng.choice(NAMES).lower(), rng.choice(DOMAINS)
    email = f"{name}{rng.randint(1, 99)}@{dom}.{rng.choice(TLDS)}"
    return f"Please write to {email} before {rng.choice(['Monday', 'Friday', 'noon'])}.", email


def m_extract_year(rng: random.Random) -> tuple[str, str]:
    y = rng.randint(1850, 2030)
    return f"{rng.choice(NAMES)} moved to {rng.choice(CITIES)} in {y} with {rng.randint(2, 9)} friends.", str(y)


def m_extract_city(rng: random.Random) -> tuple[str, str]:
    c = rng.choice(CITIES)
    return f"{rng.choice(NAMES)} bought a {rng.choice(WORDS)} in {c} last week.", c


def m_extract_name(rng: random.Random) -> tuple[str, str]:
    n = rng.choice(NAMES)
    return f"yesterday the {rng.choice(WORDS)} was found by {n} near the {rng.choice(WORDS)}.", n


def m_extract_domain(rng: random.Random) -> tuple[str, str]:
    d = f"{rng.choice(DOMAINS)}.{rng.choice(TLDS)}"
    return f"See https://www.{d}/{rng.choice(WORDS)}/{rng.randint(1, 999)} for details.", d


def m_extract_hashtag(rng: random.Random) -> tuple[str, str]:
    tag = rng.choice(WORDS)
    return f"Great day at the {rng.choice(WORDS)} with friends #{tag} so fun", tag


def m_extract_quoted(rng: random.Random) -> tuple[str, str]:
    q = " ".join(_phrase(rng, 2, 3))
    return f'{rng.choice(NAMES)} said "{q}" and left the room.', q


def m_extract_price(rng: random.Random) -> tuple[str, str]:
    p = rng.randint(2, 500)
    return f"The {rng.choice(WORDS)} costs ${p} at the {rng.choice(WORDS)} shop.", str(p)


def m_key_value(rng: random.Random) -> tuple[str, str]:
    vals = {"name": rng.choice(NAMES), "age": str(rng.randint(18, 90)), "city": rng.choice(CITIES)}
    key = rng.choice(list(vals))
    return "; ".join(f"{k}={v}" for k, v in vals.items()) + f". Key: {key}", vals[key]


def m_json_wrap(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, json.dumps({"answer": w})


def m_date_reformat(rng: random.Random) -> tuple[str, str]:
    y, mo, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return f"{y}-{mo:02d}-{d:02d}", f"{d:02d}/{mo:02d}/{y}"


def m_phone_digits(rng: random.Random) -> tuple[str, str]:
    a, b, c = rng.randint(200, 999), rng.randint(100, 999), rng.randint(1000, 9999)
    return f"({a}) {b}-{c}", f"{a}{b}{c}"


def m_first_word(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 3, 6)
    return " ".join(p), p[0]


def m_last_word(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 3, 6)
    return " ".join(p), p[-1]


def m_second_word(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 3, 6)
    return " ".join(p), p[1]


def m_count_words(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 2, 9)
    return " ".join(p), str(len(p))


def m_word_length(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, str(len(w))


def m_count_vowels(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, str(sum(ch in VOWELS for ch in w))


def m_sentiment(rng: random.Random) -> tuple[str, str]:
    pos = rng.random() < 0.5
    verb = rng.choice(POSITIVE if pos else NEGATIVE)
    return f"I {verb} {rng.choice(THINGS)}.", "positive" if pos else "negative"


def m_even_odd(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(1, 999)
    return str(n), "even" if n % 2 == 0 else "odd"


def m_is_question(rng: random.Random) -> tuple[str, str]:
    q = rng.random() < 0.5
    w = rng.choice(WORDS)
    if q:
        return rng.choice([f"Where is the {w}?", f"Did you see the {w}?", f"Why is the {w} here?"]), "yes"
    return rng.choice([f"The {w} is here.", f"I saw the {w}.", f"Bring the {w} home."]), "no"


def m_animal_fruit(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return rng.choice(ANIMALS), "animal"
    return rng.choice([f for f in FRUITS if f not in ANIMALS]), "fruit"


def m_color_or_not(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return rng.choice(COLORS), "color"
    return rng.choice([w for w in WORDS if w not in COLORS]), "other"


def m_larger(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(1, 1000), 2)
    return f"{a} and {b}", str(max(a, b))


def m_topic(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(sorted(TOPICS))
    return rng.choice(TOPICS[label]), label


def m_palindrome(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        half = "".join(rng.choice("abcdelmnorst") for _ in range(rng.randint(2, 3)))
        w = half + (rng.choice("aeiou") if rng.random() < 0.5 else "") + half[::-1]
        return w, "yes"
    w = rng.choice([w for w in WORDS if w != w[::-1]])
    return w, "no"


def m_has_digit(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    if rng.random() < 0.5:
        i = rng.randint(0, len(w))
        return w[:i] + str(rng.randint(0, 9)) + w[i:], "yes"
    return w, "no"


def m_starts_vowel(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, "yes" if w[0] in VOWELS else "no"


def m_longer_word(rng: random.Random) -> tuple[str, str]:
    while True:
        a, b = rng.sample(WORDS, 2)
        if len(a) != len(b):
            return f"{a}, {b}", a if len(a) > len(b) else b


def m_uppercase(rng: random.Random) -> tuple[str, str]:
    p = " ".join(_phrase(rng, 2, 4))
    return p, p.upper()


def m_lowercase(rng: random.Random) -> tuple[str, str]:
    p = " ".join(w.upper() if rng.random() < 0.6 else w.capitalize() for w in _phrase(rng, 2, 4))
    return p, p.lower()


def m_title_case(rng: random.Random) -> tuple[str, str]:
    p = " ".join(_phrase(rng, 2, 4))
    return p, p.title()


def m_reverse_words(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 3, 5)
    return " ".join(p), " ".join(reversed(p))


def m_reverse_letters(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, w[::-1]


def m_remove_vowels(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, "".join(ch for ch in w if ch not in VOWELS)


def m_sort_words(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 3, 5)
    return " ".join(p), " ".join(sorted(p))


def m_dedupe_words(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 3, 4)
    dup = p + [rng.choice(p)]
    rng.shuffle(dup)
    seen: list[str] = []
    for w in dup:
        if w not in seen:
            seen.append(w)
    return " ".join(dup), " ".join(seen)


def m_snake_case(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 2, 4)
    return " ".join(p), "_".join(p)


def m_kebab_case(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 2, 4)
    return " ".join(p), "-".join(p)


def m_camel_case(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 2, 4)
    return " ".join(p), p[0] + "".join(w.capitalize() for w in p[1:])


def m_acronym(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 2, 4)
    return " ".join(p), "".join(w[0] for w in p).upper()


def m_comma_join(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 3, 5)
    return " ".join(p), ", ".join(p)


def m_double_word(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, f"{w} {w}"


def m_swap_first_last(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 3, 5)
    q = [p[-1], *p[1:-1], p[0]]
    return " ".join(p), " ".join(q)


def m_exclaim(rng: random.Random) -> tuple[str, str]:
    p = " ".join(_phrase(rng, 2, 4))
    return p, p + "!"


def m_brackets(rng: random.Random) -> tuple[str, str]:
    p = " ".join(_phrase(rng, 1, 3))
    return p, f"[{p}]"


def m_quote(rng: random.Random) -> tuple[str, str]:
    p = " ".join(_phrase(rng, 1, 3))
    return p, f'"{p}"'


def m_mirror(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, w + w[::-1]


def m_add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 60), rng.randint(1, 60)
    return f"{a} and {b}", str(a + b)


def m_subtract(rng: random.Random) -> tuple[str, str]:
    a, b = sorted(rng.sample(range(1, 90), 2), reverse=True)
    return f"{a} and {b}", str(a - b)


def m_multiply(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"{a} and {b}", str(a * b)


def m_word_to_digit(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 20)
    return NUMBER_WORDS[n], str(n)


def m_digit_to_word(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 20)
    return str(n), NUMBER_WORDS[n]


def m_max_list(rng: random.Random) -> tuple[str, str]:
    xs = _numbers(rng)
    return ", ".join(map(str, xs)), str(max(xs))


def m_min_list(rng: random.Random) -> tuple[str, str]:
    xs = _numbers(rng)
    return ", ".join(map(str, xs)), str(min(xs))


def m_sum_list(rng: random.Random) -> tuple[str, str]:
    xs = _numbers(rng, 2, 4, 20)
    return ", ".join(map(str, xs)), str(sum(xs))


def m_count_items(rng: random.Random) -> tuple[str, str]:
    xs = rng.sample(FRUITS, rng.randint(2, 8))
    return ", ".join(xs), str(len(xs))


def m_next_in_sequence(rng: random.Random) -> tuple[str, str]:
    a, d = rng.randint(1, 20), rng.randint(1, 9)
    xs = [a + d * i for i in range(4)]
    return ", ".join(map(str, xs)), str(a + d * 4)


def m_double_number(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(1, 250)
    return str(n), str(2 * n)


def m_increment(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(1, 998)
    return str(n), str(n + 1)


def m_decrement(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(2, 999)
    return str(n), str(n - 1)


def m_roman(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(1, 39)
    return _roman(n), str(n)


def m_letter_position(rng: random.Random) -> tuple[str, str]:
    i = rng.randint(0, 25)
    return chr(97 + i), str(i + 1)


def m_next_letter(rng: random.Random) -> tuple[str, str]:
    i = rng.randint(0, 24)
    return chr(97 + i), chr(98 + i)


def m_previous_letter(rng: random.Random) -> tuple[str, str]:
    i = rng.randint(1, 25)
    return chr(97 + i), chr(96 + i)


def m_first_letter(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, w[0]


def m_last_letter(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, w[-1]


def m_yes_upper(rng: random.Random) -> tuple[str, str]:
    # classification whose answer style is fixed: the label in capitals.
    n = rng.randint(1, 99)
    return str(n), "YES" if n > 50 else "NO"


def m_repeat_three(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    return w, f"{w} {w} {w}"


def m_capital_first_word(rng: random.Random) -> tuple[str, str]:
    p = _phrase(rng, 2, 4)
    return " ".join(p), " ".join([p[0].upper(), *p[1:]])


def _check_json(example: Example, output: str) -> bool:
    text = output.strip().splitlines()[0] if output.strip() else ""
    try:
        return json.loads(text) == json.loads(example.output)
    except (json.JSONDecodeError, ValueError):
        return False


def _check_exact_raw(example: Example, output: str) -> bool:
    # exact on the first line, keeping trailing punctuation (the punctuation is the skill).
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    return bool(lines) and lines[0] == example.output


# ------------------------------------------------------------------ the table
def _t(name: str, family: str, cores: tuple[str, str, str], make: Maker, check: object = "exact_ci") -> Task:
    return Task(name, family, cores, make, check)  # type: ignore[arg-type]


TASKS: tuple[Task, ...] = (
    # formats and extraction
    _t("extract_email", "extraction", ("Extract the email address from the text.", "Find the e-mail address mentioned in the message and return it.", "Which email address appears in the sentence?"), m_extract_email),
    _t("extract_year", "extraction", ("Extract the year mentioned in the sentence.", "Return the four-digit year that appears in the text.", "In which year did it happen according to the sentence?"), m_extract_year),
    _t("extract_city", "extraction", ("Extract the city named in the sentence.", "Return the name of the city mentioned in the text.", "Which city does the sentence mention?"), m_extract_city, "exact"),
    _t("extract_name", "extraction", ("Extract the person's name from the sentence.", "Return the first name of the person mentioned in the text.", "Who is the person named in the sentence?"), m_extract_name, "exact"),
    _t("extract_domain", "extraction", ("Extract the domain name from the URL in the text, without www.", "Return the website domain of the link, dropping the www prefix.", "Which domain does the link point to? Leave out www."), m_extract_domain),
    _t("extract_hashtag", "extraction", ("Extract the hashtag word from the post, without the # sign.", "Return the word that follows the # symbol in the text.", "Which tag is used in the post? Give it without the hash sign."), m_extract_hashtag),
    _t("extract_quoted", "extraction", ("Extract the words inside the double quotes.", "Return the quoted phrase from the sentence, without quotation marks.", "What exactly did the person say? Give only the quoted words."), m_extract_quoted),
    _t("extract_price", "extraction", ("Extract the price in dollars as a number, without the $ sign.", "Return how many dollars the item costs, digits only.", "What is the cost mentioned in the sentence? Answer with the number."), m_extract_price, "number"),
    _t("key_value_lookup", "formats", ("Look up the value of the requested key in the key=value list.", "Given key=value pairs and a key, return that key's value.", "Find the value stored under the key named at the end."), m_key_value),
    _t("json_wrap", "formats", ('Wrap the word in a JSON object with the key "answer".', 'Return a JSON object whose "answer" field holds the word.', 'Format the input as JSON: {"answer": <word>}.'), m_json_wrap, _check_json),
    _t("date_reformat", "formats", ("Convert the ISO date YYYY-MM-DD to DD/MM/YYYY.", "Rewrite the date from year-month-day into day/month/year with slashes.", "Change the date format to day/month/year."), m_date_reformat, "exact"),
    _t("phone_digits", "formats", ("Keep only the digits of the phone number.", "Strip brackets, spaces and dashes from the phone number.", "Write the phone number as one run of digits."), m_phone_digits, "exact"),
    _t("first_word", "extraction", ("Return the first word of the text.", "Which word comes first in the input? Give that word.", "Output the opening word of the sentence."), m_first_word),
    _t("last_word", "extraction", ("Return the last word of the text.", "Which word comes last in the input? Give that word.", "Output the final word of the sentence."), m_last_word),
    _t("second_word", "extraction", ("Return the second word of the text.", "Which word comes right after the first one? Give it.", "Output word number two of the sentence."), m_second_word),
    _t("first_letter", "extraction", ("Return the first letter of the word.", "Which letter does the word start with?", "Give the initial character of the word."), m_first_letter, "exact"),
    _t("last_letter", "extraction", ("Return the last letter of the word.", "Which letter does the word end with?", "Give the final character of the word."), m_last_letter, "exact"),
    # counting
    _t("count_words", "counting", ("Count the words in the text.", "How many words does the input contain? Give a number.", "Return the number of words in the sentence."), m_count_words, "number"),
    _t("word_length", "counting", ("Count the letters in the word.", "How many characters long is the word?", "Return the length of the word as a number."), m_word_length, "number"),
    _t("count_vowels", "counting", ("Count the vowels in the word.", "How many of the letters a, e, i, o, u does the word contain?", "Return the number of vowels in the word."), m_count_vowels, "number"),
    _t("count_items", "counting", ("Count the items in the comma-separated list.", "How many entries are in the list? Give a number.", "Return the number of things listed."), m_count_items, "number"),
    # classification
    _t("sentiment", "classification", ("Classify the sentiment of the review as positive or negative.", "Is the opinion in the text positive or negative?", "Label the review: positive or negative."), m_sentiment),
    _t("even_odd", "classification", ("Say whether the number is even or odd.", "Classify the number as even or odd.", "Is the given integer even or odd?"), m_even_odd),
    _t("is_question", "classification", ("Answer yes if the sentence is a question, otherwise no.", "Is the input a question? Reply yes or no.", "Decide whether the text asks something: yes or no."), m_is_question),
    _t("animal_or_fruit", "classification", ("Classify the word as animal or fruit.", "Is the word an animal or a fruit?", "Label the item: animal or fruit."), m_animal_fruit),
    _t("color_or_other", "classification", ("Answer color if the word is a color, otherwise other.", "Is the word the name of a color? Reply color or other.", "Label the word: color or other."), m_color_or_not),
    _t("topic", "classification", ("Classify the topic of the sentence as sports, food or weather.", "Which topic is the text about: sports, food or weather?", "Label the sentence with its subject: sports, food or weather."), m_topic),
    _t("palindrome", "classification", ("Answer yes if the word is a palindrome, otherwise no.", "Does the word read the same backwards? yes or no.", "Is the string a palindrome? Reply yes or no."), m_palindrome),
    _t("has_digit", "classification", ("Answer yes if the text contains a digit, otherwise no.", "Does the string include any number character? yes or no.", "Is there a digit in the input? Reply yes or no."), m_has_digit),
    _t("starts_with_vowel", "classification", ("Answer yes if the word starts with a vowel, otherwise no.", "Does the word begin with a, e, i, o or u? yes or no.", "Is the first letter of the word a vowel? Reply yes or no."), m_starts_vowel),
    _t("over_fifty", "classification", ("Answer YES in capitals if the number is greater than 50, otherwise NO.", "Is the number above fifty? Reply YES or NO in upper case.", "Say YES when the value exceeds 50 and NO when it does not, in capitals."), m_yes_upper, "exact"),
    _t("larger_number", "comparison", ("Return the larger of the two numbers.", "Which of the two numbers is bigger? Give it.", "Output the maximum of the two values."), m_larger, "number"),
    _t("longer_word", "comparison", ("Return the longer of the two words.", "Which of the two words has more letters? Give it.", "Output the word with the greater length."), m_longer_word),
    # rewriting
    _t("uppercase", "rewriting", ("Convert the text to uppercase.", "Rewrite the input in capital letters.", "Write every letter of the text in upper case."), m_uppercase, "exact"),
    _t("lowercase", "rewriting", ("Convert the text to lowercase.", "Rewrite the input in small letters.", "Write every letter of the text in lower case."), m_lowercase, "exact"),
    _t("title_case", "rewriting", ("Convert the text to title case.", "Capitalise the first letter of every word.", "Rewrite the phrase so each word starts with a capital letter."), m_title_case, "exact"),
    _t("capitalize_first_word", "rewriting", ("Write only the first word in capitals and keep the rest unchanged.", "Uppercase the first word of the text, leave the other words as they are.", "Put the opening word in upper case; copy the rest."), m_capital_first_word, "exact"),
    _t("reverse_words", "rewriting", ("Reverse the order of the words.", "Write the words of the input backwards, last word first.", "Output the same words in reverse order."), m_reverse_words),
    _t("reverse_letters", "rewriting", ("Spell the word backwards.", "Reverse the letters of the word.", "Write the word from its last letter to its first."), m_reverse_letters),
    _t("remove_vowels", "rewriting", ("Remove all vowels from the word.", "Delete the letters a, e, i, o and u from the word.", "Write the word without its vowels."), m_remove_vowels),
    _t("sort_words", "rewriting", ("Sort the words alphabetically.", "Put the words in alphabetical order.", "Arrange the words from A to Z."), m_sort_words),
    _t("dedupe_words", "rewriting", ("Remove repeated words, keeping the first occurrence of each.", "Drop duplicate words and keep the original order.", "Write each word only once, in the order it first appears."), m_dedupe_words),
    _t("snake_case", "rewriting", ("Convert the phrase to snake_case.", "Join the words with underscores.", "Rewrite the words as one identifier separated by underscores."), m_snake_case, "exact"),
    _t("kebab_case", "rewriting", ("Convert the phrase to kebab-case.", "Join the words with hyphens.", "Rewrite the words as one identifier separated by dashes."), m_kebab_case, "exact"),
    _t("camel_case", "rewriting", ("Convert the phrase to camelCase.", "Join the words, capitalising every word after the first.", "Rewrite the words as one camel case identifier."), m_camel_case, "exact"),
    _t("acronym", "rewriting", ("Make an acronym from the first letters of the words, in capitals.", "Return the initials of the words as an upper-case abbreviation.", "Abbreviate the phrase by its capitalised initial letters."), m_acronym, "exact"),
    _t("comma_join", "rewriting", ("Separate the words with commas.", "Put a comma and a space between the words.", "Rewrite the words as a comma-separated list."), m_comma_join, "exact"),
    _t("swap_first_last", "rewriting", ("Swap the first and last words.", "Exchange the positions of the opening and closing words.", "Put the last word first and the first word last, keeping the middle."), m_swap_first_last),
    # style
    _t("exclaim", "style", ("Repeat the text and end it with an exclamation mark.", "Add an exclamation mark at the end of the phrase.", "Make the phrase an exclamation by appending !."), m_exclaim, _check_exact_raw),
    _t("brackets", "style", ("Wrap the text in square brackets.", "Put the input between [ and ].", "Surround the phrase with square brackets."), m_brackets, _check_exact_raw),
    _t("quote", "style", ("Wrap the text in double quotes.", "Put the input between quotation marks.", "Surround the phrase with double quotation marks."), m_quote, _check_exact_raw),
    _t("double_word", "style", ("Write the word twice, separated by a space.", "Repeat the word two times.", "Say the word and then say it again."), m_double_word),
    _t("repeat_three", "style", ("Write the word three times, separated by spaces.", "Repeat the word three times.", "Say the word thrice in a row."), m_repeat_three),
    _t("mirror", "style", ("Write the word followed by the word reversed, with no space.", "Append the backwards spelling of the word to the word itself.", "Mirror the word: the word then its reverse, joined."), m_mirror),
    # arithmetic on text
    _t("add", "arithmetic", ("Add the two numbers.", "Return the sum of the two numbers.", "What do the two numbers make when added together?"), m_add, "number"),
    _t("subtract", "arithmetic", ("Subtract the second number from the first.", "Return the difference: first number minus second.", "How much is the first number minus the second one?"), m_subtract, "number"),
    _t("multiply", "arithmetic", ("Multiply the two numbers.", "Return the product of the two numbers.", "What do the two numbers make when multiplied?"), m_multiply, "number"),
    _t("word_to_digit", "arithmetic", ("Write the number word as digits.", "Convert the spelled-out number to numerals.", "Turn the English number word into a numeral."), m_word_to_digit, "number"),
    _t("digit_to_word", "arithmetic", ("Write the number in English words.", "Spell out the numeral as a word.", "Turn the digits into the English number word."), m_digit_to_word),
    _t("max_of_list", "arithmetic", ("Return the largest number in the list.", "Which number in the list is the biggest?", "Output the maximum value of the list."), m_max_list, "number"),
    _t("min_of_list", "arithmetic", ("Return the smallest number in the list.", "Which number in the list is the lowest?", "Output the minimum value of the list."), m_min_list, "number"),
    _t("sum_of_list", "arithmetic", ("Add up all the numbers in the list.", "Return the total of the listed numbers.", "What is the sum of the list?"), m_sum_list, "number"),
    _t("next_in_sequence", "arithmetic", ("Continue the arithmetic sequence with its next number.", "Which number comes next in the series?", "Give the following term of the sequence."), m_next_in_sequence, "number"),
    _t("double_number", "arithmetic", ("Double the number.", "Multiply the number by two.", "What is twice the given number?"), m_double_number, "number"),
    _t("increment", "arithmetic", ("Add one to the number.", "Return the number plus one.", "What number comes right after the given one?"), m_increment, "number"),
    _t("decrement", "arithmetic", ("Subtract one from the number.", "Return the number minus one.", "What number comes right before the given one?"), m_decrement, "number"),
    _t("roman_to_int", "arithmetic", ("Convert the Roman numeral to an integer.", "Write the Roman numeral as an ordinary number.", "What is the value of the Roman numeral in digits?"), m_roman, "number"),
    _t("letter_position", "arithmetic", ("Give the position of the letter in the alphabet.", "Which number is the letter in the alphabet, counting a as 1?", "Return the alphabet index of the letter, starting at 1."), m_letter_position, "number"),
    _t("next_letter", "arithmetic", ("Return the letter that follows in the alphabet.", "Which letter comes after the given one?", "Give the next letter of the alphabet."), m_next_letter, "exact"),
    _t("previous_letter", "arithmetic", ("Return the letter that comes before in the alphabet.", "Which letter precedes the given one?", "Give the previous letter of the alphabet."), m_previous_letter, "exact"),
)

# Whole tasks never seen in training. Most have a close sibling in training; a few (topic, roman) have none.
HELD_OUT: tuple[str, ...] = (
    "last_word",
    "second_word",
    "last_letter",
    "lowercase",
    "kebab_case",
    "swap_first_last",
    "remove_vowels",
    "min_of_list",
    "subtract",
    "decrement",
    "previous_letter",
    "extract_hashtag",
    "starts_with_vowel",
    "count_vowels",
    "brackets",
    "repeat_three",
    "digit_to_word",
)

__all__ = ["TASKS", "HELD_OUT", "normalise_answer"]
