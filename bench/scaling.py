"""scaling: 1 vs 2 worker processes in one consumer group, and the core's cost per event as the
tracked state grows.

Workers: the kafka benchmark's throughput run (pre-loaded input, start of the workers until the
last output record) with 1 and then 2 workers on a fresh broker each; the ratio is 2 / 1.
Both workers, the broker and this process share the machine's cores.

State: the same number of events through a fresh ``FeedbackEngine`` with 10x and 100x more
devices (utterances fixed), then with 10x and 100x more distinct utterances (devices fixed).
More devices with the same events also means fewer events per device (fewer rephrase
candidates), so the workload is not identical: outputs per event are reported alongside.
"""

from __future__ import annotations

from typing import Any

from bench.common import Options, Row, fmt_rate, fmt_ratio, log, synth_stream
from bench.core import engine_run, tracked
from bench.kafka import throughput


def core_point(opts: Options, n_events: int, n_devices: int, n_utterances: int,
               ) -> dict[str, Any]:
    lines, _ = synth_stream(n_events, n_devices, n_utterances, opts.seed, opts.progress)
    timing, engine, counts = engine_run(lines)
    state = tracked(engine)
    return {"events": len(lines), "devices": n_devices, "utterances": n_utterances,
            "us_per_event": 1e6 * timing.wall_s / len(lines),
            "cpu_us_per_event": 1e6 * timing.cpu_s / len(lines),
            "outputs_per_event": sum(counts.values()) / len(lines),
            "rephrases_per_event": counts["rephrases"] / len(lines), "tracked_state": state}


def _series_rows(label: str, points: list[dict[str, Any]], key: str) -> list[Row]:
    base = points[0]
    rows = []
    for p in points[1:]:
        wall = p["us_per_event"] / base["us_per_event"]
        cpu = p["cpu_us_per_event"] / base["cpu_us_per_event"]
        rows.append(Row(
            f"scaling: core cost, {p[key]:,} {label}",
            f"{p['us_per_event']:.0f} us/ev (cpu {p['cpu_us_per_event']:.0f})",
            f"{base[key]:,} {label}: {base['us_per_event']:.0f} us/ev "
            f"(cpu {base['cpu_us_per_event']:.0f})",
            f"{wall:.2f}x (cpu {cpu:.2f}x)", "~1x (flat)",
            f"{p[key] // base[key]}x {label}; outputs/ev {p['outputs_per_event']:.2f} vs "
            f"{base['outputs_per_event']:.2f}, rephrases/ev {p['rephrases_per_event']:.3f} vs "
            f"{base['rephrases_per_event']:.3f}"))
    return rows


def run(opts: Options) -> tuple[dict[str, Any], dict[str, Any], list[Row]]:
    n_kafka = opts.pick(15_000, 5_000, opts.kafka_events)
    n_core = opts.pick(40_000, 10_000)
    devices = opts.pick((1_000, 10_000, 100_000), (100, 1_000, 10_000))
    utterances = opts.pick((60, 600, 6_000), (60, 600, 6_000))
    fixed_devices, fixed_utterances = opts.pick(10_000, 1_000), 20_000
    params = {"kafka_events": n_kafka, "core_events": n_core, "devices": list(devices),
              "utterances": list(utterances), "fixed_devices": fixed_devices,
              "fixed_utterances_requested": fixed_utterances, "seed": opts.seed}

    workers = []
    for n in (1, 2):
        log(f"scaling: {n} worker(s), {n_kafka:,} events")
        workers.append(throughput(opts, n, n_kafka, f"bench-scaling-{n}"))
    one, two = workers
    rows = [Row("scaling: 2 workers vs 1", fmt_rate(two["ev_per_s"]),
                f"1 worker {fmt_rate(one['ev_per_s'])}",
                fmt_ratio(two["ev_per_s"] / one["ev_per_s"]), "",
                f"{n_kafka:,} events, start-up included (1: {one['startup_s']:.1f} s, 2: "
                f"{two['startup_s']:.1f} s); without start-up "
                f"{two['steady_ev_per_s'] / one['steady_ev_per_s']:.2f}x")]
    for w in workers:
        if not w["complete"]:
            rows[0].note += (f"; INCOMPLETE with {w['workers']} worker(s): "
                             f"{w['barge_ins_read']} of {w['barge_ins_expected']} barge-ins, "
                             f"then 30 s without output (ratio meaningless)")

    by_devices, by_utterances = [], []
    for d in devices:
        log(f"scaling: core, {n_core:,} events, {d:,} devices")
        by_devices.append(core_point(opts, n_core, d, fixed_utterances))
    for u in utterances:
        log(f"scaling: core, {n_core:,} events, {u:,} utterances")
        by_utterances.append(core_point(opts, n_core, fixed_devices, u))
    rows += _series_rows("devices", by_devices, "devices")
    rows += _series_rows("utterances", by_utterances, "utterances")
    results = {"workers": workers, "core_by_devices": by_devices,
               "core_by_utterances": by_utterances}
    return params, results, rows
