"""Word lists and the fixed "world" that the embedded corpus talks about.

Everything here is a tuple (or a dict of tuples, which keeps its insertion order), so the generator
draws the same words on every machine and Python version. The world tables (towns, animals) are fixed facts: every document that
mentions a town states the same river, population and trade, so a model can learn them.
"""

from __future__ import annotations

GIRL_NAMES = (
    "Anna", "Mia", "Lily", "Emma", "Sara", "Lucy", "Nora", "Ella", "Ruby", "Zoe", "Ivy", "Maya",
    "Rosa", "Lena", "Hana", "Ada", "June", "Iris", "Clara", "Alice", "Grace", "Nina", "Olga", "Tess",
)
BOY_NAMES = (
    "Tom", "Ben", "Sam", "Leo", "Max", "Jack", "Noah", "Finn", "Owen", "Luke", "Hugo", "Theo",
    "Omar", "Ravi", "Ivan", "Paul", "Eli", "Felix", "Oscar", "Adam", "Kai", "Milo", "Dan", "Jonas",
)
ANIMAL_HEROES = (
    ("rabbit", "Pip"), ("fox", "Rusty"), ("bear", "Bruno"), ("cat", "Whiskers"), ("dog", "Buddy"),
    ("mouse", "Squeak"), ("owl", "Hoot"), ("duck", "Daisy"), ("frog", "Hop"), ("turtle", "Shelly"),
    ("squirrel", "Nutmeg"), ("hedgehog", "Spike"),
)
PEOPLE_KINDS = {"she": ("girl", "little girl", "young girl"), "he": ("boy", "little boy", "young boy")}

COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "black", "brown")
SIZES = ("big", "small", "tiny", "huge", "little", "long", "round")
FEELINGS_GOOD = ("happy", "glad", "proud", "excited", "calm", "cheerful")
FEELINGS_BAD = ("sad", "worried", "scared", "tired", "angry", "lonely")
TOYS = (
    "ball", "kite", "doll", "truck", "drum", "boat", "robot", "puzzle", "train", "hat", "book",
    "balloon", "bike", "scarf", "box", "shell", "stone", "cup", "key", "lamp",
)
PLACES = (
    ("park", "in the park"), ("forest", "in the forest"), ("garden", "in the garden"),
    ("beach", "at the beach"), ("school", "at school"), ("farm", "on the farm"),
    ("river", "by the river"), ("hill", "on the hill"), ("market", "at the market"),
    ("library", "in the library"), ("kitchen", "in the kitchen"), ("lake", "by the lake"),
)
TIMES = (
    "One sunny morning", "One rainy day", "On a cold winter evening", "One warm summer afternoon",
    "Early one Sunday", "Late one night", "One windy day in autumn", "On the first day of spring",
)
OPENINGS = ("Once upon a time", "Long ago", "Not so long ago", "In a small village")
FOODS = (
    "apples", "bread", "cheese", "carrots", "eggs", "honey", "milk", "oranges", "pears", "rice",
    "soup", "cookies", "plums", "beans", "fish",
)
JOBS = (
    "baker", "farmer", "teacher", "doctor", "painter", "sailor", "builder", "cook", "driver",
    "gardener", "singer", "writer",
)
ACTIVITIES = (
    "read a book", "draw a picture", "sing a song", "build a tower", "fly a kite", "plant a tree",
    "bake a cake", "play a game", "go for a walk", "clean the house", "feed the ducks", "write a letter",
)

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
COPY_WORDS = (
    "moon", "river", "apple", "stone", "cloud", "tree", "bird", "star", "sand", "rain", "fire",
    "leaf", "road", "door", "bell", "milk", "wind", "ship", "snow", "gold", "salt", "rope", "hill",
    "fish",
)
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)

# (town, region, river, population, founded, trade). Fictional, fixed facts.
TOWNS = (
    ("Dunmore", "north", "Amber", 12400, 1204, "glass"),
    ("Halvik", "east", "Sella", 8300, 1388, "wool"),
    ("Brenna", "south", "Oren", 21500, 1102, "cheese"),
    ("Corwick", "west", "Amber", 5600, 1450, "boats"),
    ("Tallow", "north", "Vess", 3100, 1521, "candles"),
    ("Mirefield", "south", "Oren", 15800, 1297, "rice"),
    ("Ostrand", "east", "Kale", 27300, 1066, "iron"),
    ("Pellin", "west", "Sella", 9900, 1333, "paper"),
    ("Quarry Hill", "north", "Vess", 4200, 1612, "stone"),
    ("Rosmere", "south", "Lunn", 18700, 1175, "roses"),
    ("Steading", "east", "Kale", 6500, 1410, "horses"),
    ("Varrow", "west", "Lunn", 11200, 1256, "salt"),
    ("Wendle", "north", "Amber", 7400, 1489, "clocks"),
    ("Yarrowby", "south", "Sella", 2900, 1550, "honey"),
    ("Ashford", "east", "Oren", 31000, 1021, "bread"),
    ("Larkspur", "west", "Vess", 13600, 1366, "silk"),
)
RIVERS = {
    "Amber": ("the Grey Hills", "the Northern Sea"),
    "Sella": ("Lake Sella", "the Eastern Sea"),
    "Oren": ("the Oren Springs", "the Southern Sea"),
    "Kale": ("the Kale Mountains", "the Eastern Sea"),
    "Vess": ("the Vess Glacier", "the Northern Sea"),
    "Lunn": ("the Lunn Marshes", "the Western Sea"),
}

# (animal, plural, legs, food, home, sound, fact)
ANIMALS = (
    ("cat", "cats", 4, "fish and mice", "houses", "meow", "sleep for most of the day"),
    ("dog", "dogs", 4, "meat", "houses", "woof", "have a very good sense of smell"),
    ("cow", "cows", 4, "grass", "farms", "moo", "give milk"),
    ("horse", "horses", 4, "grass and hay", "stables", "neigh", "can sleep standing up"),
    ("sheep", "sheep", 4, "grass", "fields", "baa", "grow thick wool"),
    ("duck", "ducks", 2, "seeds and bugs", "ponds", "quack", "have waterproof feathers"),
    ("owl", "owls", 2, "mice", "trees", "hoot", "hunt at night"),
    ("frog", "frogs", 4, "flies", "ponds", "croak", "start life as tadpoles"),
    ("bee", "bees", 6, "nectar", "hives", "buzz", "make honey"),
    ("spider", "spiders", 8, "insects", "webs", "no sound", "spin silk webs"),
    ("hen", "hens", 2, "grain", "farms", "cluck", "lay eggs"),
    ("pig", "pigs", 4, "almost anything", "farms", "oink", "roll in mud to stay cool"),
    ("goat", "goats", 4, "leaves and grass", "hills", "bleat", "are good climbers"),
    ("bear", "bears", 4, "berries and fish", "forests", "growl", "sleep through the winter"),
    ("fox", "foxes", 4, "mice and berries", "dens", "bark", "have bushy tails"),
    ("ant", "ants", 6, "crumbs and leaves", "nests", "no sound", "can lift heavy things"),
)
