"""memory: RSS per tracked utterance and per tracked device, one fresh process per size.

Each child warms the engine up (imports, code paths, the fixed part of the state), measures
RSS (``/proc/self/statm``, after ``gc.collect()``), feeds N synthetic events built on the fly
(never held in memory), flushes, measures again: bytes per item = RSS delta / N.

- ``utterances``: N turns with N distinct utterances from 1,000 devices whose dedupe memory is
  filled during warm-up, so only per-utterance state grows: its defect-rate estimator, its
  global Markov state, its personal Markov state (one device said it) and drift warm-up
  counters. Turns of a device are 46 s apart (outside the rephrase window). The caps
  ``max_tracked_keys`` / ``rewrite_max_states`` (200k by default) are raised above N so that
  every utterance stays tracked: with the defaults, memory stops growing at 200k.
- ``devices``: N devices with one turn each (utterances from a fixed set): session state, a
  dedupe memory holding one id, and a personal miner for the 10,000 most recent devices.
- ``device_full``: devices that sent ``dedupe_capacity`` (256) events each: the dedupe memory
  full, the most a quiet device costs.
- ``utterances_trace``: the utterance case under tracemalloc, top allocation sites.

The children run two at a time (RSS is per process, so running them side by side does not
change the numbers; it halves the wall time).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from bench.common import Options, Row, log, rss_bytes

TARGET_UTTERANCE_BYTES = 1024
T0 = 1_717_200_000_000
WARM_DEVICES = 1_000
FIXED_UTTERANCES = [f"play station {i} radio" for i in range(50)]


def _turn(i: int, device: int, ts: int, utterance: str) -> bytes:
    return orjson.dumps({"type": "turn", "event_id": f"e{i}", "device_id": f"dev{device:07d}",
                         "ts": ts, "utterance": utterance, "intent": "PlayMusic",
                         "domain": "Music", "context": {"device_type": "speaker"}})


def _fill_dedupe(devices: int, capacity: int, ts: int) -> Iterator[bytes]:
    """Feedback to unknown turns: the cheapest events that still fill a device's dedupe
    memory (they are dead-lettered as ``unknown_turn``)."""
    for k in range(capacity):
        for d in range(devices):
            yield orjson.dumps({"type": "feedback", "event_id": f"w{k}-{d}",
                                "device_id": f"dev{d:07d}", "ts": ts + k, "ref_event_id": "x",
                                "kind": "satisfaction", "value": "positive"})


def _scenario(kind: str, n: int, capacity: int) -> tuple[Iterator[bytes], Iterator[bytes]]:
    """(warm-up events, measured events)."""
    if kind in ("utterances", "utterances_trace"):
        # Each device's first turn creates its session and personal miner: warm-up, not
        # per-utterance state. Measured turns start soon after (devices expire after 30 min).
        warm = itertools.chain(_fill_dedupe(WARM_DEVICES, capacity, T0), (
            _turn(-1 - d, d, T0 + 1_000 + d, FIXED_UTTERANCES[d % 50])
            for d in range(WARM_DEVICES)))
        t1 = T0 + 200_000
        measured = (_turn(i, i % WARM_DEVICES, t1 + 46 * i, f"play track {i} please")
                    for i in range(n))
        return warm, measured
    if kind == "devices":
        warm = (_turn(i, i, T0 + i, FIXED_UTTERANCES[i % 50]) for i in range(WARM_DEVICES))
        # 1 ms apart: 1M devices span 17 minutes of event time, under the 30-minute idle expiry.
        measured = (_turn(i, WARM_DEVICES + i, T0 + WARM_DEVICES + i, FIXED_UTTERANCES[i % 50])
                    for i in range(n))
        return warm, measured
    if kind == "device_full":
        warm = (_turn(i, 10_000_000 + i, T0 + i, FIXED_UTTERANCES[i % 50])
                for i in range(WARM_DEVICES))
        return warm, _fill_dedupe(n, capacity, T0 + WARM_DEVICES)
    raise ValueError(kind)


def child(kind: str, n: int) -> dict[str, Any]:
    from stream.engine import FeedbackEngine
    from stream.settings import Settings

    cap = max(200_000, 2 * n)
    settings = dataclasses.replace(Settings(), max_tracked_keys=cap, rewrite_max_states=cap)
    engine = FeedbackEngine(settings)
    warm, measured = _scenario(kind, n, settings.dedupe_capacity)
    for line in warm:
        engine.process(line)
    gc.collect()
    if kind == "utterances_trace":
        tracemalloc.start()
    rss0 = rss_bytes()
    for line in measured:
        engine.process(line)
    engine.flush()
    gc.collect()
    rss1 = rss_bytes()
    result: dict[str, Any] = {"kind": kind, "n": n, "rss_before": rss0, "rss_after": rss1,
                              "bytes_per_item": (rss1 - rss0) / n}
    if kind == "utterances_trace":
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("lineno")
        total = sum(s.size for s in stats)
        result["traced_bytes_per_item"] = total / n
        result["top_sites"] = [{"site": f"{s.traceback[0].filename.split('/')[-1]}:"
                                        f"{s.traceback[0].lineno}",
                                "bytes_per_item": round(s.size / n, 1)} for s in stats[:10]]
    sizes = engine.rewrites.state_sizes()
    result["tracked"] = {
        "devices": len(engine.stage1.devices.devices),
        "estimators_utterance": len(engine.stage2.trackers["utterance"]),
        "markov_global": sizes["global"]["states"],
        "markov_personal": sizes["personal"]["states"],
        "personal_miners": sizes["personal"]["devices"],
        "drift_warming": len(engine.stage2.drift.warming),
    }
    return result


def _run_child(kind: str, n: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "child", kind, str(n)],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {kind} {n} failed:\n{proc.stderr.decode()[-2000:]}")
    return orjson.loads(proc.stdout)


def run(opts: Options) -> tuple[dict[str, Any], dict[str, Any], list[Row]]:
    sizes = opts.memory_sizes or opts.pick((10_000, 100_000, 1_000_000), (2_000, 20_000))
    full_devices = opts.pick(1_000, 200)
    trace_n = opts.pick(20_000, 2_000)
    jobs = ([("utterances", n) for n in sizes] + [("devices", n) for n in sizes]
            + [("device_full", full_devices), ("utterances_trace", trace_n)])
    jobs.sort(key=lambda j: -j[1])  # the longest first: two workers finish together
    params = {"sizes": list(sizes), "device_full_devices": full_devices,
              "trace_utterances": trace_n, "warm_devices": WARM_DEVICES}
    log(f"memory: {len(jobs)} child processes, two at a time")
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda job: _run_child(*job), jobs))
    by = {(r["kind"], r["n"]): r for r in done}
    rows = []
    for n in sizes:
        r = by[("utterances", n)]
        t = r["tracked"]
        rows.append(Row(f"memory: per tracked utterance @ {n:,}",
                        f"{r['bytes_per_item']:,.0f} B", "",
                        f"{r['bytes_per_item'] / TARGET_UTTERANCE_BYTES:.2f}x target",
                        f"<= {TARGET_UTTERANCE_BYTES} B",
                        f"RSS +{(r['rss_after'] - r['rss_before']) / 2**20:,.0f} MiB; "
                        f"{t['estimators_utterance']:,} estimators, {t['markov_global']:,} "
                        f"global + {t['markov_personal']:,} personal Markov states"))
    for n in sizes:
        r = by[("devices", n)]
        t = r["tracked"]
        rows.append(Row(f"memory: per tracked device @ {n:,}", f"{r['bytes_per_item']:,.0f} B",
                        "", "", "", f"one turn each; {t['devices']:,} devices, "
                        f"{t['personal_miners']:,} personal miners (cap 10,000)"))
    r = by[("device_full", full_devices)]
    rows.append(Row(f"memory: per device, dedupe memory full ({full_devices:,})",
                    f"{r['bytes_per_item']:,.0f} B", "", "", "",
                    "256 remembered event ids per device"))
    r = by[("utterances_trace", trace_n)]
    top = ", ".join(f"{s['site']} {s['bytes_per_item']:.0f}" for s in r["top_sites"][:4])
    rows.append(Row(f"memory: tracemalloc per utterance ({trace_n:,})",
                    f"{r['traced_bytes_per_item']:,.0f} B", "", "", "", f"top sites: {top}"))
    return params, {"children": done}, rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        sys.stdout.buffer.write(orjson.dumps(child(sys.argv[2], int(sys.argv[3]))))
    else:
        sys.exit("usage: python -m bench.memory child KIND N")
