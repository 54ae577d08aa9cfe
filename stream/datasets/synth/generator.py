"""The synthetic stream's entry points: ``generate`` (events with their truth), malformed
lines, the behaviour ``Summary``, ``write`` and the command line.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from stream.datasets.jsonl import write_pairs
from stream.datasets.synth import sim, vocab

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
    return min(len(vocab.vocabulary()), max(30, n_events // 10))


def generate(n_events: int, n_devices: int, n_utterances: int | None = None, seed: int = 0,
             malformed: int = 0, final_watermark: bool = True,
             probs: vocab.Probs | None = None, session_gap_ms: int = 2_400_000,
             feedback_delay_ms: int = vocab.FEEDBACK_WINDOW_MS,
             ) -> Iterator[tuple[bytes, dict | None]]:
    """(JSONL line without newline, truth) pairs: ``n_events`` turn/feedback events, then
    ``malformed`` bad lines scattered among them (truth ``{"malformed": reason}``), then one
    watermark 10 minutes after the last event (truth ``{"watermark": ts}``).
    ``session_gap_ms`` (mean idle time between a device's sessions) and
    ``feedback_delay_ms`` (latest feedback after a response) shape sparse streams."""
    if n_devices < 1 and n_events > 0:
        raise ValueError("n_devices must be >= 1")
    n_utt = default_utterances(n_events) if n_utterances is None else n_utterances
    simulation = sim.Simulation(n_devices, n_utt, seed, probs or vocab.Probs(),
                                session_gap_ms, feedback_delay_ms)
    mr = random.Random(seed * 1_000_003 + 1)  # own stream: bad lines do not shift good ones
    at = sorted(mr.sample(range(n_events + malformed), malformed))
    kinds = [MALFORMED[i % len(MALFORMED)] for i in range(malformed)]
    mr.shuffle(kinds)
    line_no = k = 0
    last_ts, device, ref = vocab.BASE_TS, "dev00000", "dev00000-1"
    for ts, line, truth in simulation.events(n_events):
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
    write_pairs(generate(**kw), path_events, path_truth,
                lambda truth: summary.add(truth if truth is not None else {"malformed": "?"}))
    return summary.result()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m stream.datasets.synth",
        description="Generate a synthetic interaction stream (schema v1) and its ground truth.")
    ap.add_argument("--events", type=int, default=4000, help="turn + feedback events")
    ap.add_argument("--devices", type=int, default=300)
    ap.add_argument("--utterances", type=int, default=None,
                    help="distinct request utterances (default: grows with --events)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malformed", type=int, default=0, help="bad lines scattered in the stream")
    ap.add_argument("--no-final-watermark", action="store_true")
    ap.add_argument("--session-gap-ms", type=int, default=2_400_000,
                    help="mean idle time between two sessions of a device (default: 40 min; "
                         "hours make a sparse stream with long idle gaps)")
    ap.add_argument("--feedback-delay-ms", type=int, default=vocab.FEEDBACK_WINDOW_MS,
                    help="latest explicit feedback after the response ended (default: 30 s)")
    ap.add_argument("--out", default="-", help="events JSONL (default: stdout)")
    ap.add_argument("--truth", default=None, help="ground-truth JSONL (default: not written)")
    a = ap.parse_args(argv)
    summary = write(a.out, a.truth, n_events=a.events, n_devices=a.devices,
                    n_utterances=a.utterances, seed=a.seed, malformed=a.malformed,
                    final_watermark=not a.no_final_watermark,
                    session_gap_ms=a.session_gap_ms, feedback_delay_ms=a.feedback_delay_ms)
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}", file=sys.stderr)
    return 0

