"""Synthetic interaction stream (schema v1) with known ground truth, for tests and benchmarks.

Simulates many voice-assistant devices as one merged log: sessions of turns, rephrase chains,
barge-ins, stop follow-ups, explicit feedback, unknown requests, personal phrasings and hard
negatives (related follow-ups that are not rephrases). Every line comes with a truth dict that
follows the detector's definitions, so detectors can be scored exactly. Pure Python, no Kafka.

>>> pairs = list(generate(300, 12, seed=1, malformed=4))
>>> len(pairs), sum(1 for _, t in pairs if "malformed" in t), "watermark" in pairs[-1][1]
(305, 4, True)
>>> normalize("What's the weather in  Wilkerson, 'Washington'?")
"what's the weather in wilkerson washington"
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import functools
import heapq
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import orjson

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


FAMILIES: tuple[Family, ...] = tuple(Family(n, d, i, s, v, _bar(p), r) for n, d, i, s, v, p, r in (
    ("genre", "Music", "PlayMusic", "genre", GENRES,
     "play {}|play some {}|play {} music|put on some {}", "Playing {}."),
    ("artist", "Music", "PlayMusic", "artist", ARTISTS,
     "play {}|play some {}|play songs by {}|play music by {}", "Playing {}."),
    ("weather", "Weather", "GetWeather", "city", CITIES,
     "weather in {}|what's the weather in {}|how's the weather in {}|forecast for {}",
     "In {}, it's 64 degrees and sunny."),
    ("timer", "Timer", "SetTimer", "duration", DURATIONS,
     "set a timer for {}|{} timer|start a timer for {}|timer for {}", "Timer set for {}."),
    ("alarm", "Alarm", "SetAlarm", "time", TIMES,
     "set an alarm for {}|wake me up at {}|alarm for {}", "Alarm set for {}."),
    ("lights_on", "SmartHome", "TurnOn", "room", ROOMS,
     "turn on the {} lights|{} lights on|switch on the {} lights|lights on in the {}", "OK."),
    ("lights_off", "SmartHome", "TurnOff", "room", ROOMS,
     "turn off the {} lights|{} lights off|switch off the {} lights", "OK."),
    ("dim", "SmartHome", "SetBrightness", "room", ROOMS,
     "dim the {} lights|make the {} lights dimmer", "OK."),
    ("thermostat", "SmartHome", "SetTemperature", "degrees", [str(d) for d in range(62, 79)],
     "set the thermostat to {}|set the temperature to {} degrees|make it {} degrees",
     "Setting the temperature to {}."),
    ("volume", "Volume", "SetVolume", "level", [str(v) for v in range(1, 11)],
     "set volume to {}|volume {}|change the volume to {}", "OK."),
    ("who", "Knowledge", "WhoIs", "person", PEOPLE,
     "who is {}|tell me about {}|who's {}", "Here's what I found about {}."),
    ("age", "Knowledge", "GetAge", "person", PEOPLE,
     "how old is {}|what's the age of {}", "{} is 62 years old."),
    ("capital", "Knowledge", "GetCapital", "country", COUNTRIES,
     "what's the capital of {}|capital of {}|what is the capital city of {}",
     "Here's the capital of {}."),
    ("define", "Knowledge", "Define", "word", WORDS,
     "define {}|what does {} mean|what's the definition of {}", "Here's the definition of {}."),
    ("spell", "Knowledge", "Spell", "word", WORDS, "how do you spell {}|spell {}",
     "It's spelled..."),
    ("translate", "Knowledge", "Translate", "word", WORDS,
     "how do you say {} in spanish|translate {} to spanish", "In Spanish, that's..."),
    ("shopping", "Shopping", "AddToList", "item", ITEMS,
     "add {} to my shopping list|put {} on my shopping list|add {} to the shopping list",
     "I added {} to your shopping list."),
    ("book", "Books", "PlayAudiobook", "title", BOOKS,
     "play the audiobook {}|read {}|play {} audiobook|listen to {}", "Here's {}, on Audible."),
    ("volume_up", "Volume", "VolumeUp", None, NO_SLOT,
     "volume up|turn it up|louder|turn the volume up", "OK."),
    ("volume_down", "Volume", "VolumeDown", None, NO_SLOT,
     "volume down|turn it down|quieter|lower the volume", "OK."),
    ("next", "Music", "NextSong", None, NO_SLOT, "next song|skip this song|play the next song",
     "OK."),
    ("pause", "Music", "Pause", None, NO_SLOT, "pause|pause the music|pause it", "OK."),
    ("what_song", "Music", "WhatSong", None, NO_SLOT, "what song is this|who sings this song",
     "This is Blue in Green by Miles Davis."),
    ("time_left", "Timer", "TimeLeft", None, NO_SLOT,
     "how much time is left|how much time is left on my timer", "About six minutes left."),
    ("rain", "Weather", "GetForecast", None, NO_SLOT,
     "will it rain tomorrow|is it going to rain tomorrow|do i need an umbrella tomorrow",
     "There's a 40 percent chance of rain tomorrow."),
    ("local_weather", "Weather", "GetWeather", None, NO_SLOT,
     "what's the weather|what's the weather like|how's the weather today", "It's 64 and sunny."),
    ("time", "Knowledge", "GetTime", None, NO_SLOT, "what time is it|what's the time",
     "It's 7:42."),
    ("joke", "Fun", "TellJoke", None, NO_SLOT, "tell me a joke|say something funny",
     "Why did the scarecrow win an award? He was outstanding in his field."),
    ("read_list", "Shopping", "ReadList", None, NO_SLOT,
     "what's on my shopping list|read my shopping list", "You have four items on your list."),
    ("news", "News", "PlayNews", None, NO_SLOT, "what's the news|play the news|news briefing",
     "Here's your news briefing."),
))
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


def _family_req(fi: int, pi: int, value: str, prefix: str = "", suffix: str = "") -> Req:
    f = FAMILIES[fi]
    slots = {f.slot: value} if f.slot else {}
    text = prefix + f.phrasings[pi].format(value) + suffix
    response = f.response.format(value)
    return Req(text, fi, pi, value, f.domain, f.intent, slots, response[0].upper() + response[1:],
               (f.intent, value))


def _systematic_req(text: str, base: str) -> Req:
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
                    q = _family_req(fi, pi, v, prefix, suffix)
                    by_text.setdefault(q.text, q)
    for base in SYSTEMATIC:
        by_text[base] = _systematic_req(base, base)
    rest = [q for t, q in by_text.items() if t not in HEAD]
    random.Random(20240601).shuffle(rest)
    return tuple(by_text[t] for t in HEAD) + tuple(rest)


def _corrupt(text: str, r: random.Random) -> str:
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


class _Turn:
    __slots__ = ("ev", "ts", "id", "req", "stop", "rephrase_of", "chain", "behaviour")

    def __init__(self, ev: dict[str, Any], req: Req, behaviour: str) -> None:
        self.ev, self.ts, self.id, self.req = ev, ev["ts"], ev["event_id"], req
        self.stop = req.fam == STOP
        self.rephrase_of: str | None = None
        self.chain: str | None = None
        self.behaviour = behaviour

    @property
    def end(self) -> int:
        """When the assistant stopped talking (a turn without a response ends soon after ts)."""
        return int(self.ev.get("tts_end_ts", self.ts + 800))


@dataclasses.dataclass
class _Device:
    id: str
    kind: str
    locale: str
    users: list[str]
    personal: dict[str, str]  # systematic utterance -> this device's own better phrasing
    favourites: list[Req]
    next_ts: int
    n: int = 0  # events, sessions and chains share one counter: ids stay unique and short

    def new_id(self, tag: str = "") -> str:
        self.n += 1
        return f"{self.id}-{tag}{self.n}"


@dataclasses.dataclass
class _Session:
    dev: _Device
    id: str
    turns: list[_Turn] = dataclasses.field(default_factory=list)
    feedback: list[tuple[dict[str, Any], dict[str, Any]]] = dataclasses.field(default_factory=list)
    queued: list[tuple[_Turn, str, str]] = dataclasses.field(default_factory=list)
    user: str | None = None
    state: str = "idle"


class _Sim:
    """Draws sessions device by device; ``events`` merges them into one ts-ordered log."""

    def __init__(self, n_devices: int, n_utterances: int, seed: int, probs: Probs) -> None:
        self.r, self.p = random.Random(seed), probs
        self.vocab = vocabulary()[: max(1, n_utterances)]
        total, self.cum = 0.0, []
        for rank in range(len(self.vocab)):
            total += 1.0 / (rank + 1)  # Zipf, exponent 1: a few requests dominate, long tail
            self.cum.append(total)
        self.devices = [self._device(i) for i in range(n_devices)]

    def _zipf(self) -> Req:
        i = bisect.bisect(self.cum, self.r.random() * self.cum[-1])
        return self.vocab[min(i, len(self.vocab) - 1)]  # float rounding can reach the total

    def _device(self, i: int) -> _Device:
        r = self.r
        kind = r.choices(("speaker", "screen", "car", "tv"), (55, 20, 15, 10))[0]
        locale = r.choices(("en-US", "en-GB", "en-CA", "en-IN"), (80, 8, 7, 5))[0]
        users = [f"u{r.getrandbits(32):08x}" for _ in range(r.choice((1, 1, 2, 3)))]
        favourites = [self._zipf() for _ in range(r.randint(0, 3))]
        personal: dict[str, str] = {}
        if r.random() < self.p.personal_device:
            base = "weather in wilkerson" if r.random() < 0.6 else r.choice(list(SYSTEMATIC))
            personal[base] = SYSTEMATIC[base].personal
            # Twice: these devices ask it all the time ("a device always says ...").
            favourites += [_systematic_req(base, base)] * 2
        return _Device(f"dev{i:05d}", kind, locale, users, personal, favourites,
                       BASE_TS + r.randint(0, 3_600_000))

    # --- time and turns -------------------------------------------------------------------

    @staticmethod
    def _restates(S: _Session, ts: int, q: Req) -> bool:
        norm = normalize(q.text)
        for T in reversed(S.turns):
            if ts - T.ts > REPHRASE_WINDOW_MS:
                return False
            if T.req.key == q.key or normalize(T.ev["utterance"]) == norm:
                return True
        return False

    def _pick(self, S: _Session, ts: int) -> tuple[Req, int]:
        """A new request that does not restate anything inside the window (else: wait)."""
        r, favs = self.r, S.dev.favourites
        for _ in range(8):
            q = r.choice(favs) if favs and r.random() < 0.3 else self._zipf()
            if not self._restates(S, ts, q):
                return q, ts
        return q, ts + REPHRASE_WINDOW_MS  # the last turn is >= 12 s back: now nothing is in range

    def _intr(self) -> str | None:
        if self.r.random() >= self.p.interrupt:
            return None
        return "device" if self.r.random() < self.p.device_barge_in else "timing"

    def _after(self, prev: _Turn, intr: str | None, lo: int, hi: int) -> int:
        """Start of the next turn: ``lo``..``hi`` ms after ``prev`` unless it interrupts it."""
        r, ev = self.r, prev.ev
        if intr and "tts_end_ts" in ev:
            s, e = ev["tts_start_ts"], ev["tts_end_ts"]
            if intr == "timing":  # the device missed it: only the timestamps tell
                return r.randint(s + 300, e - 200)
            self._barge(prev)
            return ev["barge_in_ts"] + r.randint(350, 1200)
        low = max(prev.end + 300, prev.ts + lo)
        return r.randint(low, max(low, prev.ts + hi))

    def _barge(self, T: _Turn) -> None:
        ev = T.ev
        b = self.r.randint(ev["tts_start_ts"] + 200, ev["tts_end_ts"] - 300)
        ev["barge_in_ts"], ev["tts_end_ts"] = b, b + self.r.randint(50, 300)  # response cut short

    def _turn(self, S: _Session, ts: int, q: Req, behaviour: str, text: str | None = None,
              fail: str | None = None) -> _Turn:
        r, dev = self.r, S.dev
        text = q.text if text is None else text
        if r.random() < self.p.surface_noise:
            text = text[0].upper() + text[1:] + r.choice(("?", ".", "!", ""))
        domain, intent, slots, response = q.domain, q.intent, q.slots, q.response
        asr, nlu = r.uniform(0.82, 0.99), r.uniform(0.7, 0.99)
        if fail == "asr":
            asr, nlu = r.uniform(0.3, 0.65), r.uniform(0.2, 0.7)
            if r.random() < 0.5:
                intent, slots, nlu = "unknown", {}, r.uniform(0.05, 0.35)
            response = r.choice(("Sorry, I didn't catch that.", "Sorry, I couldn't find that."))
        elif fail == "nlu":
            other = FAMILIES[r.randrange(len(FAMILIES))]
            domain, intent = ("", "unknown") if r.random() < 0.5 else (other.domain, other.intent)
            slots, nlu = {}, r.uniform(0.1, 0.45)
            response = r.choice(("Sorry, I'm not sure about that.", "Here's what I found."))
        elif fail == "repeat":  # a service error: NLU was right, the answer never came
            response = "Sorry, something went wrong. Please try again."
        elif fail == "systematic":
            s = SYSTEMATIC[q.text]
            domain, intent, response = s.wrong_domain, s.wrong_intent, s.wrong_response
            slots, nlu = {s.slot: s.value}, r.uniform(0.6, 0.9)
        elif fail == "unknown":
            if r.random() < 0.4:
                domain, intent = FAMILIES[r.randrange(len(FAMILIES))][1:3]
            nlu = r.uniform(0.05, 0.29)
        ev: dict[str, Any] = {"type": "turn", "event_id": dev.new_id(), "device_id": dev.id,
                              "ts": ts}
        if S.user:
            ev["user_id"] = S.user
        ev.update(session_id=S.id, utterance=text, asr_confidence=round(asr, 3))
        if domain:
            ev["domain"] = domain
        ev.update(intent=intent, nlu_confidence=round(nlu, 3))
        if slots:
            ev["slots"] = slots
        if response is not None:
            start = ts + r.randint(500, 1500)
            ev.update(response=response, tts_start_ts=start, tts_end_ts=start + min(
                6000, max(1000, 50 * len(response) + r.randint(300, 2500))))
        ev["context"] = {"device_type": dev.kind, "locale": dev.locale,
                         "device_state": "driving" if dev.kind == "car" else S.state}
        if fail is None and intent in ("PlayMusic", "PlayAudiobook", "Pause", "SetTimer"):
            S.state = {"Pause": "paused", "SetTimer": "timer_running"}.get(intent, "playing")
        T = _Turn(ev, q, behaviour)
        S.turns.append(T)
        return T

    # --- behaviours -----------------------------------------------------------------------

    def _episode(self, S: _Session, t: int) -> None:
        r, p = self.r, self.p
        if r.random() < p.unknown:
            self._unknown(S, t)
        else:
            q, t = self._pick(S, t)
            sys_ = SYSTEMATIC.get(q.text) if q.fam == SYS else None
            if r.random() < (p.systematic_defect if sys_ else p.defect):
                self._defect(S, t, q, sys_)
            else:
                silent = r.random() < p.silent_defect
                T = self._turn(S, t, q, "silent_defect" if silent else "success")
                if silent or r.random() < p.positive_feedback:
                    S.queued.append((T, "satisfaction", "negative" if silent else "positive"))
                self._followups(S, T)
        for T, kind, value in S.queued:  # after the episode: barge-ins may have cut tts_end_ts
            ev = {"type": "feedback", "event_id": S.dev.new_id(), "device_id": S.dev.id,
                  "ts": T.end + r.randint(500, FEEDBACK_WINDOW_MS), "ref_event_id": T.id,
                  "kind": kind, "value": value}
            S.feedback.append((ev, {"event_id": ev["event_id"], "ref_event_id": T.id,
                                    "kind": kind, "value": value}))
        S.queued.clear()

    def _defect(self, S: _Session, t: int, q: Req, sys_: Systematic | None) -> None:
        r, p = self.r, self.p
        mode = "systematic" if sys_ else r.choices(("asr", "nlu", "repeat"), p.defect_modes)[0]
        text = _corrupt(q.text, r) if mode == "asr" else None
        head = self._turn(S, t, q, "defect", text=text, fail=mode)
        u = r.random()
        if u < p.rephrase:
            self._chain(S, head, mode, via_stop=False)
        elif u < p.rephrase + p.stop:
            if r.random() < p.rephrase_after_stop:
                self._chain(S, head, mode, via_stop=True)
            else:
                self._stop(S, head)
        elif r.random() < 0.5:  # the user gives up: only a barge-in or feedback tells
            self._barge(head)
        else:
            S.queued.append((head, "satisfaction", "negative"))
        if r.random() < p.negative_feedback and (head, "satisfaction", "negative") not in S.queued:
            S.queued.append((head, "satisfaction", "negative"))
        if mode != "repeat" and r.random() < p.teach:
            S.queued.append((head, "teach", sys_.teach if sys_ else f"I meant {q.text}"))

    def _unknown(self, S: _Session, t: int) -> None:
        r = self.r
        for _ in range(8):
            text = r.choice(UNKNOWN)
            q = Req(text, UNK, 0, text, "", "unknown", {}, "Sorry, I don't know that one.",
                    ("unknown", text))
            if not self._restates(S, t, q):
                break
        else:
            t += REPHRASE_WINDOW_MS
        head = self._turn(S, t, q, "unknown", fail="unknown")
        if r.random() < self.p.unknown_repeat:
            self._chain(S, head, "unknown", via_stop=False)

    def _attempt(self, dev: _Device, q: Req, mode: str, ok: bool) -> tuple[str, Req, str | None]:
        """What the user says next: (ASR text, meaning, how it fails or None)."""
        r = self.r
        if mode == "systematic":
            if not ok:
                return q.text if r.random() < 0.7 else "please " + q.text, q, mode
            better = SYSTEMATIC[q.text].better
            text = dev.personal.get(q.text) or (better[0] if r.random() < 0.8 else r.choice(better))
            return text, _systematic_req(text, q.text), None
        if mode == "asr":
            return (q.text, q, None) if ok else (_corrupt(q.text, r), q, mode)
        if mode == "nlu":  # say it differently: synonym / word order
            f = FAMILIES[q.fam]
            others = [i for i in range(len(f.phrasings)) if i != q.phr]
            alt = _family_req(q.fam, r.choice(others), q.value) if others else q
            return alt.text, alt, None if ok else mode
        if mode == "unknown" and r.random() < 0.3:
            return "please " + q.text, q, mode
        return q.text, q, None if ok else mode  # exact repeat

    def _chain(self, S: _Session, head: _Turn, mode: str, via_stop: bool) -> None:
        """1-3 restatements of ``head``, each of the previous attempt; success or give-up."""
        r, p = self.r, self.p
        n = r.randint(1, 2) if mode == "unknown" else 1
        if r.random() < p.long_chain:
            n = r.randint(2, 3)
        success = mode != "unknown" and r.random() < p.chain_success
        head.chain = cid = S.dev.new_id("c")
        prev = head
        for k in range(1, n + 1):
            if (k == 1 and via_stop) or r.random() < 0.08:
                ts = self._after(self._stop(S, prev), None, 1000, 7000)
            else:
                ts = self._after(prev, self._intr(), 2000, 20_000)
            text, q, fail = self._attempt(S.dev, head.req, mode, success and k == n)
            T = self._turn(S, ts, q, "rephrase", text=text, fail=fail)
            T.rephrase_of, T.chain, prev = prev.id, cid, T
        if success:
            if r.random() < p.positive_feedback * 3:
                S.queued.append((prev, "satisfaction", "positive"))
            return
        u = r.random()  # giving up must leave a trace, or the last attempt would look fine
        if u < 0.6:
            self._stop(S, prev)
        elif u < 0.85:
            S.queued.append((prev, "satisfaction", "negative"))
        else:
            self._barge(prev)

    def _stop(self, S: _Session, prev: _Turn) -> _Turn:
        ts = self._after(prev, self._intr(), 1500, 9500)
        used = {normalize(T.ev["utterance"]) for T in S.turns[-6:] if T.stop}
        text = self.r.choice([s for s in STOPS if s not in used])
        intent = "Cancel" if text.startswith(("cancel", "never", "no ")) else "Stop"
        return self._turn(S, ts, Req(text, STOP, 0, "", "Global", intent, {}, None,
                                     (intent, text)), "stop")

    def _followups(self, S: _Session, T: _Turn) -> None:
        """Related but different requests: negatives a rephrase detector must not flag."""
        r, prob = self.r, self.p.followup
        while T.req.fam >= 0 and r.random() < prob:
            f = FAMILIES[T.req.fam]
            if f.name not in FOLLOW:
                return
            if f.intent == "PlayMusic" and r.random() < self.p.followup_long:
                ts = T.ts + r.randint(60_000, 300_000)  # after listening for a while
                if r.random() < 0.3:
                    T = self._turn(S, ts, Req("stop", STOP, 0, "", "Global", "Stop", {}, None,
                                              ("Stop", "stop")), "followup")
                    return
                q = _family_req(T.req.fam, r.randrange(len(f.phrasings)), r.choice(f.values))
            else:
                ts = r.randint(max(T.end + 300, T.ts + 2500), T.ts + 25_000)
                name = r.choice(FOLLOW[f.name])
                g = FAMILIES[FAMILY_INDEX[name]]
                same = (f.name, name) in SAME_VALUE and r.random() < 0.6
                q = _family_req(FAMILY_INDEX[name], r.randrange(len(g.phrasings)),
                                T.req.value if same else r.choice(g.values))
            if self._restates(S, ts, q):
                return
            T = self._turn(S, ts, q, "followup")
            prob *= 0.5

    # --- sessions and the merged log -------------------------------------------------------

    def session(self, dev: _Device, start: int, budget: int) -> list[tuple[int, bytes, dict]]:
        r = self.r
        S = _Session(dev, dev.new_id("s"), user=r.choice(dev.users) if r.random() < 0.9 else None)
        t, episodes = start, 1
        while episodes < 8 and r.random() < 0.55:
            episodes += 1
        for _ in range(episodes):
            self._episode(S, t)
            last = S.turns[-1]
            t = max(last.ts + 12_000, last.end + 1000) + r.randint(0, 60_000)
        if len(S.turns) + len(S.feedback) > budget:  # the last few events: one plain turn each
            S = _Session(dev, dev.new_id("s"), user=S.user)
            self._turn(S, start, self._pick(S, start)[0], "success")
        return self._finish(S)

    @staticmethod
    def _finish(S: _Session) -> list[tuple[int, bytes, dict]]:
        """Serialise a session with the truth its events imply under the detector's rules."""
        rephrased = {T.rephrase_of for T in S.turns if T.rephrase_of}
        negative = {ev["ref_event_id"] for ev, _ in S.feedback if ev["value"] == "negative"}
        truths, last_of_chain = [], {}
        for i, T in enumerate(S.turns):
            nxt = S.turns[i + 1] if i + 1 < len(S.turns) else None
            ev = T.ev
            barge = "device" if "barge_in_ts" in ev else (
                "timing" if nxt and nxt.ts < ev.get("tts_end_ts", 0) else None)
            stop_next = nxt is not None and nxt.stop and nxt.ts - T.ts <= STOP_WINDOW_MS
            on = (barge is not None, T.id in negative, T.id in rephrased, stop_next)
            signals = [name for name, hit in zip(SIGNALS, on, strict=True) if hit]
            truth = {"event_id": T.id, "device_id": S.dev.id, "barge_in": barge,
                     "rephrase_of": T.rephrase_of, "defective": bool(signals), "signals": signals,
                     "chain_id": T.chain, "chain_outcome": None,
                     "utterance_norm": normalize(ev["utterance"]), "behaviour": T.behaviour}
            truths.append(truth)
            if T.chain:
                last_of_chain[T.chain] = truth
        for truth in truths:
            if truth["chain_id"]:
                end = last_of_chain[truth["chain_id"]]
                truth["chain_outcome"] = "failure" if end["defective"] else "success"
        out = [(T.ts, orjson.dumps(T.ev), tr) for T, tr in zip(S.turns, truths, strict=True)]
        out += [(ev["ts"], orjson.dumps(ev), tr) for ev, tr in S.feedback]
        out.sort(key=lambda e: e[0])  # stable: a turn precedes feedback with the same ts
        return out

    def events(self, n_events: int) -> Iterator[tuple[int, bytes, dict]]:
        """Exactly ``n_events`` events in non-decreasing ts order, devices interleaved."""
        r = self.r
        devices = [(d.next_ts, i) for i, d in enumerate(self.devices)]
        heapq.heapify(devices)
        pending: list[tuple[int, int, bytes, dict]] = []
        made = seq = 0
        while made < n_events:
            start, i = heapq.heappop(devices)
            # No session drawn later starts before ``start``: everything up to it is final.
            while pending and pending[0][0] <= start:
                ts, _, line, truth = heapq.heappop(pending)
                yield ts, line, truth
            session = self.session(self.devices[i], start, n_events - made)
            for ts, line, truth in session:
                heapq.heappush(pending, (ts, seq, line, truth))
                seq += 1
            made += len(session)
            gap = min(8 * 3_600_000, int(r.expovariate(1 / 2_400_000)))  # minutes to hours
            heapq.heappush(devices, (session[-1][0] + SESSION_GAP_MIN_MS + gap, i))
        while pending:
            ts, _, line, truth = heapq.heappop(pending)
            yield ts, line, truth


MALFORMED = ("not_json", "truncated", "array", "missing_field", "wrong_type", "unknown_type",
             "bad_ts", "bad_satisfaction", "not_utf8", "empty_utterance", "control_char",
             "oversized")


def _malformed(kind: str, k: int, ts: int, device: str, ref: str, r: random.Random) -> bytes:
    ev: dict[str, Any] = {"type": "turn", "event_id": f"bad-{k}", "device_id": device, "ts": ts,
                          "utterance": "play jazz"}
    if kind == "not_json":
        return r.choice((b"play jazz", b"<html>502 Bad Gateway</html>", b"turn,dev1,play jazz"))
    if kind == "truncated":
        return orjson.dumps(ev)[: r.randint(10, 40)]
    if kind == "array":
        return orjson.dumps([ev])
    if kind == "not_utf8":
        return orjson.dumps(ev).replace(b"play jazz", b"play caf\xe9 \xff\xfe")
    if kind == "missing_field":
        del ev[r.choice(("event_id", "device_id", "ts", "utterance"))]
    elif kind == "wrong_type":
        ev["ts"] = str(ts)
    elif kind == "unknown_type":
        ev["type"] = "click"
    elif kind == "bad_ts":
        ev["ts"] = r.choice((-ts, ts * 1000, 0))  # negative, microseconds, epoch zero
    elif kind == "bad_satisfaction":
        ev.update(type="feedback", ref_event_id=ref, kind="satisfaction", value="meh")
        del ev["utterance"]
    elif kind == "empty_utterance":
        ev["utterance"] = r.choice(("", "   "))
    elif kind == "control_char":
        ev["utterance"] = "play\x00 jazz\x07"
    elif kind == "oversized":
        ev["utterance"] = "play " + "jazz " * 1000
    return orjson.dumps(ev)


def default_utterances(n_events: int) -> int:
    """Distinct request utterances when not given: grows with the stream, capped by the vocab."""
    return min(len(vocabulary()), max(30, n_events // 10))


def generate(n_events: int, n_devices: int, n_utterances: int | None = None, seed: int = 0,
             malformed: int = 0, final_watermark: bool = True,
             probs: Probs | None = None) -> Iterator[tuple[bytes, dict | None]]:
    """(JSONL line without newline, truth) pairs: ``n_events`` turn/feedback events, then
    ``malformed`` bad lines scattered among them (truth ``{"malformed": reason}``), then one
    watermark 10 minutes after the last event (truth ``{"watermark": ts}``)."""
    if n_devices < 1 and n_events > 0:
        raise ValueError("n_devices must be >= 1")
    n_utt = default_utterances(n_events) if n_utterances is None else n_utterances
    sim = _Sim(n_devices, n_utt, seed, probs or Probs())
    mr = random.Random(seed * 1_000_003 + 1)  # own stream: bad lines do not shift good ones
    at = sorted(mr.sample(range(n_events + malformed), malformed))
    kinds = [MALFORMED[i % len(MALFORMED)] for i in range(malformed)]
    mr.shuffle(kinds)
    line_no = k = 0
    last_ts, device, ref = BASE_TS, "dev00000", "dev00000-1"
    for ts, line, truth in sim.events(n_events):
        while k < malformed and at[k] == line_no:
            yield _malformed(kinds[k], k, last_ts, device, ref, mr), {"malformed": kinds[k]}
            k, line_no = k + 1, line_no + 1
        yield line, truth
        line_no, last_ts = line_no + 1, ts
        if "device_id" in truth:
            device, ref = truth["device_id"], truth["event_id"]
    for j in range(k, malformed):
        yield _malformed(kinds[j], j, last_ts, device, ref, mr), {"malformed": kinds[j]}
    if final_watermark:
        wm = last_ts + 600_000
        yield orjson.dumps({"type": "watermark", "ts": wm}), {"watermark": wm}


class Summary:
    """Counts per behaviour, signal and outcome, from truth dicts (constant memory per event)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.devices: set[str] = set()
        self.utterances: set[str] = set()
        self.chains: dict[str, tuple[int, str]] = {}

    def add(self, t: dict[str, Any]) -> None:
        c = self.counts
        if "malformed" in t:
            c["malformed"] += 1
        elif "watermark" in t:
            c["watermarks"] += 1
        elif "kind" in t:
            c["feedback"] += 1
            c[f"feedback.{t['value'] if t['kind'] == 'satisfaction' else 'teach'}"] += 1
        else:
            c["turns"] += 1
            c[f"behaviour.{t['behaviour']}"] += 1
            c["defective"] += t["defective"]
            c["rephrases"] += t["rephrase_of"] is not None
            c.update(f"signal.{s}" for s in t["signals"])
            if t["barge_in"]:
                c[f"barge_in.{t['barge_in']}"] += 1
            if t["chain_id"]:
                n = self.chains.get(t["chain_id"], (0, ""))[0]
                self.chains[t["chain_id"]] = (n + 1, t["chain_outcome"])
            self.devices.add(t["device_id"])
            self.utterances.add(t["utterance_norm"])

    def result(self) -> dict[str, int]:
        out = dict(sorted(self.counts.items()))
        out["devices"], out["distinct_utterances"] = len(self.devices), len(self.utterances)
        out["chains"] = len(self.chains)
        for outcome in ("success", "failure"):
            out[f"chains.{outcome}"] = sum(o == outcome for _, o in self.chains.values())
        out["chains.3plus_attempts"] = sum(n >= 3 for n, _ in self.chains.values())
        return out


def summarize(truths: Iterable[dict[str, Any] | None]) -> dict[str, int]:
    s = Summary()
    for t in truths:
        s.add(t if t is not None else {"malformed": "?"})
    return s.result()


def write(path_events: str, path_truth: str | None = None, **kw: Any) -> dict[str, int]:
    """Write the stream (``"-"``: stdout) and its truth as JSONL; return the summary."""
    summary = Summary()
    ev = sys.stdout.buffer if path_events == "-" else open(path_events, "wb")  # noqa: SIM115
    tr = open(path_truth, "wb") if path_truth else None  # noqa: SIM115
    try:
        for line, truth in generate(**kw):
            ev.write(line + b"\n")
            if tr:
                tr.write(orjson.dumps(truth) + b"\n")
            summary.add(truth if truth is not None else {"malformed": "?"})
    finally:
        if ev is not sys.stdout.buffer:
            ev.close()
        if tr:
            tr.close()
    return summary.result()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m stream.synth",
        description="Generate a synthetic interaction stream (schema v1) and its ground truth.")
    ap.add_argument("--events", type=int, default=4000, help="turn + feedback events")
    ap.add_argument("--devices", type=int, default=300)
    ap.add_argument("--utterances", type=int, default=None,
                    help="distinct request utterances (default: grows with --events)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malformed", type=int, default=0, help="bad lines scattered in the stream")
    ap.add_argument("--no-final-watermark", action="store_true")
    ap.add_argument("--out", default="-", help="events JSONL (default: stdout)")
    ap.add_argument("--truth", default=None, help="ground-truth JSONL (default: not written)")
    a = ap.parse_args(argv)
    summary = write(a.out, a.truth, n_events=a.events, n_devices=a.devices,
                    n_utterances=a.utterances, seed=a.seed, malformed=a.malformed,
                    final_watermark=not a.no_final_watermark)
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
