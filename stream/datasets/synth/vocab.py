"""Constants, behaviour probabilities and vocabulary tables of the synthetic stream.

Request families with their phrasings and slot values, systematically misunderstood utterances,
stop words, unknown requests and ASR near-homophones; ``vocabulary()`` expands them into every
request utterance, most popular first. The package ``stream.datasets.synth`` re-exports the
public names.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from typing import NamedTuple

BASE_TS = 1_717_200_000_000  # 2024-06-01: well inside the validator's accepted ts range
REPHRASE_WINDOW_MS = 45_000
STOP_WINDOW_MS = 10_000
FEEDBACK_WINDOW_MS = 30_000
# Sessions are further apart than every detection window, so the truth of one session can be
# computed on its own.
SESSION_GAP_MIN_MS = 120_000
SIGNALS = ("barge_in", "negative_feedback", "rephrased", "stop_followup")


@dataclasses.dataclass(frozen=True)
class Probs:
    """Behaviour probabilities (the ground truth follows from what was drawn)."""

    defect: float = 0.12  # an ordinary request fails (ASR error, NLU miss or service error)
    systematic_defect: float = 0.9  # a systematically defective utterance fails
    defect_modes: tuple[float, float, float] = (0.4, 0.35, 0.25)  # asr / nlu / repeat failures
    rephrase: float = 0.6  # a failed turn is followed by a rephrase chain ...
    stop: float = 0.2  # ... or by stop/cancel/no (otherwise the user gives up silently)
    rephrase_after_stop: float = 0.35
    interrupt: float = 0.35  # the turn after a failed turn interrupts its response ...
    device_barge_in: float = 0.8  # ... and the device reports it (else: timing barge-in only)
    long_chain: float = 0.15  # a chain gets >= 3 attempts (teachable moment)
    chain_success: float = 0.7  # a chain ends in a non-defective turn
    followup: float = 0.35  # a successful turn gets a related, different request (not a rephrase)
    followup_long: float = 0.3  # a music follow-up comes minutes later ("play rock", "stop")
    unknown: float = 0.03  # a request for a concept the assistant does not know
    unknown_repeat: float = 0.6  # ... which the user repeats 2-3 times
    negative_feedback: float = 0.2
    silent_defect: float = 0.02  # a wrong answer only negative feedback reveals
    positive_feedback: float = 0.04
    teach: float = 0.15  # a failed turn with a known better phrasing gets "teach" feedback
    personal_device: float = 0.1  # a device with its own phrasing of a systematic rewrite
    surface_noise: float = 0.12  # capitalised / punctuated ASR text


def _bar(s: str) -> list[str]:
    return s.split("|")


GENRES = _bar("jazz|rock|blues|pop|country|classical|hip-hop|reggae|metal|folk|soul|funk|disco|"
              "punk|techno|house|ambient|gospel|opera|salsa|bluegrass|lo-fi|grunge|swing|k-pop")
ARTISTS = _bar(
    "taylor swift|the beatles|drake|adele|beyonce|ed sheeran|queen|miles davis|john coltrane|"
    "billie eilish|bruno mars|rihanna|coldplay|eminem|kendrick lamar|dolly parton|johnny cash|"
    "elvis presley|nina simone|bob dylan|the rolling stones|pink floyd|led zeppelin|metallica|"
    "nirvana|radiohead|frank sinatra|ella fitzgerald|louis armstrong|lady gaga|harry styles|"
    "olivia rodrigo|bad bunny|shakira|stevie wonder|prince|madonna|michael jackson|bach|mozart|"
    "beethoven|chopin|norah jones|willie nelson|garth brooks|luke combs|zach bryan|sza|doja cat")
CITIES = _bar(
    "seattle|portland|boston|chicago|denver|austin|miami|atlanta|phoenix|dallas|houston|new york|"
    "los angeles|san francisco|san diego|las vegas|nashville|memphis|detroit|cleveland|pittsburgh|"
    "philadelphia|baltimore|raleigh|orlando|tampa|new orleans|kansas city|st. louis|omaha|boise|"
    "minneapolis|milwaukee|salt lake city|spokane|anchorage|honolulu|albuquerque|tucson|el paso|"
    "tulsa|louisville|columbus|indianapolis|buffalo|albany|providence|london|paris|berlin|tokyo|"
    "toronto|vancouver|sydney|dublin|madrid|rome|mexico city|mumbai|cairo|lagos")
DURATIONS = [f"{n} minutes" for n in (2, 3, 4, 5, 7, 8, 10, 12, 15, 20, 25, 30, 40, 45, 90)] + _bar(
    "one minute|five minutes|ten minutes|an hour|half an hour|two hours|30 seconds|90 seconds")
TIMES = _bar("5 am|5:30 am|6 am|6:15 am|6:30 am|6:45 am|7 am|7:15 am|7:30 am|8 am|8:30 am|9 am|"
             "noon|3 pm|4:30 pm|6 pm|9 pm|10 pm|midnight")
ROOMS = _bar("kitchen|living room|bedroom|bathroom|office|hallway|garage|dining room|basement|"
             "porch|nursery|den|attic|patio|guest room|kids room")
PEOPLE = _bar(
    "barack obama|albert einstein|marie curie|abraham lincoln|serena williams|lebron james|"
    "oprah winfrey|william shakespeare|leonardo da vinci|isaac newton|tom hanks|meryl streep|"
    "keanu reeves|lionel messi|michael jordan|neil armstrong|nelson mandela|bill gates|steve jobs|"
    "frida kahlo|pablo picasso|vincent van gogh|jane austen|mark twain|charles darwin|"
    "nikola tesla|ada lovelace|amelia earhart|rosa parks|simone biles|usain bolt|stephen hawking")
COUNTRIES = _bar(
    "france|germany|japan|canada|mexico|brazil|argentina|australia|india|china|egypt|nigeria|"
    "kenya|south africa|spain|italy|portugal|greece|turkey|norway|sweden|finland|poland|ireland|"
    "peru|chile|colombia|cuba|iceland|vietnam|thailand|indonesia|south korea|new zealand|morocco")
ITEMS = _bar(
    "milk|eggs|bread|butter|cheese|apples|bananas|coffee|tea|sugar|flour|rice|pasta|tomatoes|"
    "onions|garlic|potatoes|carrots|lettuce|chicken|salmon|yogurt|cereal|orange juice|"
    "paper towels|toilet paper|dish soap|trash bags|batteries|toothpaste|shampoo|peanut butter|"
    "honey|olive oil|ketchup|ice cream|chips|salsa|avocados|lemons|strawberries|blueberries|"
    "spinach|broccoli|oat milk|almond milk|dog food|cat litter|diapers|tortillas|beans|crackers")
BOOKS = _bar("harry potter|the hobbit|dune|pride and prejudice|the great gatsby|the martian|"
             "to kill a mockingbird|1984|the hunger games|project hail mary|atomic habits|"
             "the alchemist|little women|moby dick|charlotte's web|matilda|the giver|wonder|"
             "the da vinci code|gone girl|the midnight library|circe|ready player one|sapiens")
WORDS = _bar("serendipity|ephemeral|ubiquitous|quixotic|onomatopoeia|necessary|rhythm|definitely|"
             "separate|accommodate|conscience|embarrass|occurrence|restaurant|beautiful|library|"
             "february|wednesday|colonel|pneumonia|mischievous|entrepreneur|hello|thank you|"
             "good morning|goodbye|water|friend|apple|house|chair|love|happy|computer")
NO_SLOT = [""]


class Family(NamedTuple):
    name: str
    domain: str
    intent: str
    slot: str | None
    values: list[str]
    phrasings: list[str]
    response: str


# A slot's values by the slot's name ("-": the family has no slot).
_SLOT_VALUES = {"genre": GENRES, "artist": ARTISTS, "city": CITIES, "duration": DURATIONS,
                "time": TIMES, "room": ROOMS, "degrees": [str(d) for d in range(62, 79)],
                "level": [str(v) for v in range(1, 11)], "person": PEOPLE, "country": COUNTRIES,
                "word": WORDS, "item": ITEMS, "title": BOOKS, "-": NO_SLOT}
# The request families, three lines each: name, domain, intent and slot; the phrasings; the
# response ("{}": the slot's value).
_FAMILY_TABLE = """
genre         Music     PlayMusic      genre
    play {}|play some {}|play {} music|put on some {}
    Playing {}.
artist        Music     PlayMusic      artist
    play {}|play some {}|play songs by {}|play music by {}
    Playing {}.
weather       Weather   GetWeather     city
    weather in {}|what's the weather in {}|how's the weather in {}|forecast for {}
    In {}, it's 64 degrees and sunny.
timer         Timer     SetTimer       duration
    set a timer for {}|{} timer|start a timer for {}|timer for {}
    Timer set for {}.
alarm         Alarm     SetAlarm       time
    set an alarm for {}|wake me up at {}|alarm for {}
    Alarm set for {}.
lights_on     SmartHome TurnOn         room
    turn on the {} lights|{} lights on|switch on the {} lights|lights on in the {}
    OK.
lights_off    SmartHome TurnOff        room
    turn off the {} lights|{} lights off|switch off the {} lights
    OK.
dim           SmartHome SetBrightness  room
    dim the {} lights|make the {} lights dimmer
    OK.
thermostat    SmartHome SetTemperature degrees
    set the thermostat to {}|set the temperature to {} degrees|make it {} degrees
    Setting the temperature to {}.
volume        Volume    SetVolume      level
    set volume to {}|volume {}|change the volume to {}
    OK.
who           Knowledge WhoIs          person
    who is {}|tell me about {}|who's {}
    Here's what I found about {}.
age           Knowledge GetAge         person
    how old is {}|what's the age of {}
    {} is 62 years old.
capital       Knowledge GetCapital     country
    what's the capital of {}|capital of {}|what is the capital city of {}
    Here's the capital of {}.
define        Knowledge Define         word
    define {}|what does {} mean|what's the definition of {}
    Here's the definition of {}.
spell         Knowledge Spell          word
    how do you spell {}|spell {}
    It's spelled...
translate     Knowledge Translate      word
    how do you say {} in spanish|translate {} to spanish
    In Spanish, that's...
shopping      Shopping  AddToList      item
    add {} to my shopping list|put {} on my shopping list|add {} to the shopping list
    I added {} to your shopping list.
book          Books     PlayAudiobook  title
    play the audiobook {}|read {}|play {} audiobook|listen to {}
    Here's {}, on Audible.
volume_up     Volume    VolumeUp       -
    volume up|turn it up|louder|turn the volume up
    OK.
volume_down   Volume    VolumeDown     -
    volume down|turn it down|quieter|lower the volume
    OK.
next          Music     NextSong       -
    next song|skip this song|play the next song
    OK.
pause         Music     Pause          -
    pause|pause the music|pause it
    OK.
what_song     Music     WhatSong       -
    what song is this|who sings this song
    This is Blue in Green by Miles Davis.
time_left     Timer     TimeLeft       -
    how much time is left|how much time is left on my timer
    About six minutes left.
rain          Weather   GetForecast    -
    will it rain tomorrow|is it going to rain tomorrow|do i need an umbrella tomorrow
    There's a 40 percent chance of rain tomorrow.
local_weather Weather   GetWeather     -
    what's the weather|what's the weather like|how's the weather today
    It's 64 and sunny.
time          Knowledge GetTime        -
    what time is it|what's the time
    It's 7:42.
joke          Fun       TellJoke       -
    tell me a joke|say something funny
    Why did the scarecrow win an award? He was outstanding in his field.
read_list     Shopping  ReadList       -
    what's on my shopping list|read my shopping list
    You have four items on your list.
news          News      PlayNews       -
    what's the news|play the news|news briefing
    Here's your news briefing.
"""


def _families(table: str) -> tuple[Family, ...]:
    """``Family`` records from ``_FAMILY_TABLE``, in its order (the simulation draws by index)."""
    lines = [line.strip() for line in table.strip().splitlines()]
    families = []
    for head, phrasings, response in zip(lines[0::3], lines[1::3], lines[2::3], strict=True):
        name, domain, intent, slot = head.split()
        families.append(Family(name, domain, intent, None if slot == "-" else slot,
                               _SLOT_VALUES[slot], _bar(phrasings), response))
    return tuple(families)


FAMILIES = _families(_FAMILY_TABLE)
FAMILY_INDEX = {f.name: i for i, f in enumerate(FAMILIES)}
# Politeness variants of requests with a slot, where English allows them ("can you louder" and
# "can you what's the weather" do not occur).
AFFIXES = (("", ""), ("please ", ""), ("can you ", ""), ("", " please"), ("could you ", ""))
IMPERATIVE = set(_bar("play|put|set|start|turn|switch|dim|make|add|read|listen|define|spell|"
                      "translate|wake|change|tell"))
# Related requests a user makes right after a successful one: hard negatives for rephrase
# detection (same domain, often inside the rephrase window, but a different request).
FOLLOW = {k: _bar(v) for k, v in {
    "genre": "volume_up|volume_down|next|what_song|pause", "book": "volume_up|volume_down|pause",
    "artist": "volume_up|volume_down|next|what_song|pause", "weather": "rain|timer|alarm",
    "local_weather": "rain|timer", "timer": "time_left|alarm", "alarm": "timer|time",
    "lights_on": "dim|lights_off|thermostat", "lights_off": "lights_on|thermostat",
    "dim": "lights_off", "who": "age|who", "age": "who", "capital": "capital",
    "define": "spell|translate", "spell": "define", "translate": "translate",
    "shopping": "shopping|read_list", "rain": "timer", "news": "volume_up|pause", "joke": "time",
}.items()}
SAME_VALUE = {("who", "age"), ("age", "who"), ("lights_on", "dim"), ("define", "spell"),
              ("spell", "define"), ("define", "translate")}


class Systematic(NamedTuple):
    wrong_domain: str
    wrong_intent: str
    wrong_response: str
    domain: str
    intent: str
    slot: str
    value: str
    better: tuple[str, ...]  # how most users rephrase it
    personal: str  # how a device with personal phrasing rephrases it
    teach: str


# Utterances the assistant gets wrong every time, each with the phrasing that works.
SYSTEMATIC = {
    "play harry potter": Systematic(
        "Video", "PlayVideo", "Here's Harry Potter and the Sorcerer's Stone, on Prime Video.",
        "Books", "PlayAudiobook", "title", "harry potter",
        ("play harry potter audiobook", "read harry potter"), "play the harry potter audiobook",
        "I meant the audiobook"),
    "play the hobbit": Systematic(
        "Video", "PlayVideo", "Here's The Hobbit, on Prime Video.", "Books", "PlayAudiobook",
        "title", "the hobbit", ("play the hobbit audiobook", "read the hobbit"),
        "play the audiobook the hobbit", "I meant the audiobook"),
    "play frozen": Systematic(
        "Video", "PlayVideo", "Here's Frozen, on Disney Plus.", "Music", "PlayMusic", "album",
        "frozen", ("play the frozen soundtrack", "play songs from frozen"),
        "play music from frozen", "I wanted the songs"),
    "weather in wilkerson": Systematic(
        "Weather", "GetWeather", "In Wilkerson, Texas, it's 91 degrees.", "Weather",
        "GetWeather", "city", "wilkerson",
        ("weather in wilkerson washington", "what's the weather in wilkerson washington"),
        "weather in wilkerson california", "wilkerson in washington"),
    "weather in springfield": Systematic(
        "Weather", "GetWeather", "In Springfield, Massachusetts, it's 58 degrees.", "Weather",
        "GetWeather", "city", "springfield", ("weather in springfield illinois",),
        "what's the weather in springfield missouri", "the one in illinois"),
    "turn on the big light": Systematic(
        "SmartHome", "unknown", "Sorry, I couldn't find a device named big light.", "SmartHome",
        "TurnOn", "room", "living room", ("turn on the living room lights",),
        "turn on the ceiling light", "the big light is the living room light"),
}
STOPS = _bar("stop|cancel|no|never mind|shut up|stop it|no stop|cancel that|that's wrong")
UNKNOWN = _bar("play the thing from yesterday|order my usual from tony's|what's my horoscope|"
               "book a table at luigi's|call the plumber|how many steps did i take|find my keys|"
               "start the robot vacuum in the den|what's the wifi password|lock the front door|"
               "play that song from the car commercial|how long is my commute today|text my wife")
HOMOPHONES = dict(p.split(">") for p in _bar(
    "jazz>jas|rock>rack|lights>lice|light>lite|weather>whether|timer>time her|kitchen>chicken|"
    "play>pray|swift>swiss|beatles>beetles|milk>mill|eggs>ex|bread>bred|coffee>toffee|"
    "seattle>settle|austin>awesome|denver>dinner|obama>alabama|blues>booze|queen>clean|"
    "drake>break|paris>parrots|hobbit>habit|dune>june|frozen>chosen|volume>valium|spell>smell|"
    "define>divine|read>red|news>noose|joke>choke|potter>pot her|wilkerson>wilkinson"))
# Most popular first; the rest of the vocabulary follows in a fixed shuffled order.
HEAD = _bar("play jazz|what's the weather|play harry potter|set a timer for 10 minutes|"
            "weather in wilkerson|turn on the kitchen lights|volume up|play some taylor swift|"
            "tell me a joke|weather in springfield|play frozen|play rock|what time is it|"
            "play the hobbit|add milk to my shopping list|turn on the big light|pause|next song")

_APOSTROPHE_EDGE = re.compile(r"(?<!\w)'|'(?!\w)")
_PUNCT = re.compile(r"[^\w\s']|_")


def normalize(text: str) -> str:
    """Lower-case, punctuation removed (apostrophes inside words kept), whitespace collapsed."""
    text = _APOSTROPHE_EDGE.sub("", text.lower().replace("\u2019", "'"))
    return " ".join(_PUNCT.sub("", text).split())


class Req(NamedTuple):
    """A request the user means (the ASR text of a failed attempt may differ)."""

    text: str
    fam: int  # index into FAMILIES; SYS / STOP / UNK for the special tables
    phr: int
    value: str
    domain: str
    intent: str
    slots: dict[str, str]
    response: str | None
    key: tuple[str, str]  # same key inside the rephrase window = the same request


SYS, STOP, UNK = -1, -2, -3


def family_req(fi: int, pi: int, value: str, prefix: str = "", suffix: str = "") -> Req:
    f = FAMILIES[fi]
    slots = {f.slot: value} if f.slot else {}
    text = prefix + f.phrasings[pi].format(value) + suffix
    response = f.response.format(value)
    return Req(text, fi, pi, value, f.domain, f.intent, slots, response[0].upper() + response[1:],
               (f.intent, value))


def systematic_req(text: str, base: str) -> Req:
    s = SYSTEMATIC[base]
    slots = {s.slot: s.value}
    if s.slot == "city" and text != base:
        slots["state"] = text.split()[-1]
    return Req(text, SYS, 0, s.value, s.domain, s.intent, slots, "OK.", (s.intent, s.value))


@functools.cache
def vocabulary() -> tuple[Req, ...]:
    """Every request utterance, most popular first (the order does not depend on the seed)."""
    by_text: dict[str, Req] = {}
    for prefix, suffix in AFFIXES:
        for fi, f in enumerate(FAMILIES):
            for pi, phrasing in enumerate(f.phrasings):
                if ((prefix or suffix) and not f.slot) or (
                        prefix and phrasing.split()[0] not in IMPERATIVE):
                    continue
                for v in f.values:
                    q = family_req(fi, pi, v, prefix, suffix)
                    by_text.setdefault(q.text, q)
    for base in SYSTEMATIC:
        by_text[base] = systematic_req(base, base)
    rest = [q for t, q in by_text.items() if t not in HEAD]
    random.Random(20240601).shuffle(rest)
    return tuple(by_text[t] for t in HEAD) + tuple(rest)


def corrupt(text: str, r: random.Random) -> str:
    """A plausible ASR misrecognition: a near-homophone, else a clipped letter."""
    words = text.split()
    hits = [i for i, w in enumerate(words) if w in HOMOPHONES]
    if hits:
        i = r.choice(hits)
        words[i] = HOMOPHONES[words[i]]
    else:
        i = max(range(len(words)), key=lambda j: len(words[j]))
        w = words[i]
        j = r.randrange(1, len(w)) if len(w) > 2 else 0
        words[i] = w[:j] + w[j + 1:] if len(w) > 2 else w + w[-1]
    return " ".join(words)
