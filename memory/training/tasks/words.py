"""Small fixed vocabularies the task generators draw from (common, single-token-ish English words)."""

from __future__ import annotations

WORDS: tuple[str, ...] = tuple(
    """apple river stone cloud music paper garden window silver planet orange forest candle bridge pocket
    winter summer doctor engine island letter market number ocean pencil rabbit sister teacher yellow basket
    button camera dinner family guitar hammer jacket kitten ladder mirror needle pillow rocket saddle tunnel
    violin wallet anchor butter carpet desert flower glove harbor insect jungle kettle lemon mountain nest
    onion parrot quilt robot shadow tiger umbrella valley wagon zebra bottle chair table house green happy
    quick little bright gentle quiet brave cold warm dark light""".split()
)
ANIMALS: tuple[str, ...] = tuple(
    "cat dog horse tiger lion rabbit mouse eagle shark whale zebra monkey snake frog bear wolf goat sheep duck "
    "owl".split()
)
FRUITS: tuple[str, ...] = tuple(
    "apple banana cherry grape lemon mango orange peach pear plum melon kiwi lime papaya apricot fig".split()
)
COLORS: tuple[str, ...] = tuple("red blue green yellow purple orange black white pink brown gray violet".split())
NAMES: tuple[str, ...] = tuple(
    "Maria John Alice Peter Sofia David Emma Lucas Olivia Noah Hannah Omar Yuki Pablo Grace Ivan Laura Mateo".split()
)
CITIES: tuple[str, ...] = tuple(
    "Paris London Tokyo Madrid Berlin Rome Cairo Lima Oslo Dublin Vienna Lisbon Prague Sydney Toronto".split()
)
DOMAINS: tuple[str, ...] = tuple("example mail shop news cloud music travel garden books photo".split())
TLDS: tuple[str, ...] = ("com", "org", "net", "io")
NUMBER_WORDS: tuple[str, ...] = tuple(
    (
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty"
    ).split()
)
VOWELS = "aeiou"
POSITIVE: tuple[str, ...] = ("loved", "enjoyed", "adored", "was delighted by", "really liked", "was thrilled with")
NEGATIVE: tuple[str, ...] = ("hated", "disliked", "was disappointed by", "could not stand", "regretted buying")
THINGS: tuple[str, ...] = ("the movie", "the book", "the meal", "the hotel", "the concert", "the phone", "the game")
TOPICS: dict[str, tuple[str, ...]] = {
    "sports": (
        "The striker scored twice in the final match.",
        "Our team won the basketball game last night.",
        "She ran the marathon in under three hours.",
        "The tennis player served an ace to win the set.",
        "The coach praised the goalkeeper after the game.",
    ),
    "food": (
        "Add salt and simmer the soup for ten minutes.",
        "The bakery sells fresh bread every morning.",
        "He cooked pasta with tomato sauce for dinner.",
        "This cake needs two cups of sugar and butter.",
        "The chef grilled the fish with lemon.",
    ),
    "weather": (
        "Heavy rain is expected tomorrow afternoon.",
        "It will be sunny and warm all weekend.",
        "A cold wind is blowing from the north today.",
        "Snow covered the streets this morning.",
        "The storm brought thunder and strong gusts.",
    ),
}
# Words of varied length for the list families (length filters and sorts need 3- to 10-letter words).
SHORT_WORDS: tuple[str, ...] = tuple(
    "cat sun map key box pen cup hat egg ink jam log net owl rug toy van web fox bee".split()
)
LONG_WORDS: tuple[str, ...] = tuple(
    """adventure blanket calendar elephant festival mushroom notebook painting sandwich triangle volcano whistle
    keyboard lantern harvest compass dolphin library pyramid sunflower""".split()
)
LIST_WORDS: tuple[str, ...] = tuple(dict.fromkeys(WORDS + SHORT_WORDS + LONG_WORDS))
JOBS: tuple[str, ...] = tuple("doctor teacher baker pilot farmer nurse lawyer artist driver chef".split())
SPORTS: tuple[str, ...] = tuple("tennis football chess rugby hockey golf boxing rowing".split())
WEEKDAYS: tuple[str, ...] = tuple("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split())
COUNTRIES: tuple[str, ...] = tuple("France Japan Peru Norway Egypt Canada Spain Kenya Chile Italy".split())
