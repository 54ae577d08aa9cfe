"""Rewrite mining with an absorbing Markov chain (the seed's "precomputed rewrites").

Transient states are normalised utterances; SUCCESS and FAILURE are absorbing. Each finished
rephrase chain ``[u1, ..., un]`` (``rephrase-chains`` records of ``DeviceStage``) adds one count
to every transition ``u_i -> u_i+1`` and one absorption count ``u_n -> outcome``. Solving
``(I - Q) B = R`` (``numpy.linalg.solve``, no explicit inverse) gives ``P(success | start at s)
= B[s, SUCCESS]``. The rewrite of ``u`` is the utterance ``r != u`` reachable from ``u`` with
the highest ``P(success | r)`` among those with enough support; it is published when

- support(u, r) >= ``min_support``: chains in which ``u`` occurs and ``r`` occurs later,
- ``P(success | r) >= min_p_success`` and ``P(success | r) - p_turn(u) >= min_gain``, where
  ``p_turn(u)`` is the *turn-level* success of ``u`` itself: the share of its uses that ended
  their chain in a success right there (not followed by a rephrase nor failing), published as
  ``p_success_original``;
- or, failing any such ``r``, **pooled support**: the rewrites of ``u`` that each have
  ``pool_min_support`` chains and pass both thresholds on their absorption probability and on
  their own turn-level success (the low end of its 95% Beta interval) have ``min_support``
  chains together; the best of them is published (users often fix a broken phrasing with
  several good ones, none 5 times).

Modelling choices (and their limits):

- **Neighbourhood**: a solve covers at most ``max_neighbourhood`` states, expanded best-first by
  the probability of the most likely path from the sources. Transitions leaving it are dropped
  and rows renormalised over the counts kept: rare paths are ignored. States that reach no
  observed absorption inside it carry no information: left out, never original nor rewrite.
  ``prior`` adds pseudo-counts, half SUCCESS, half FAILURE, to each row (default 0).
- **Persistent users**: if users of ``u`` always rephrase until they succeed, ``P(success | u)``
  (absorption) equals the rewrite's although each use of ``u`` costs a failed turn: that is why
  the gain is taken against ``p_turn(u)``, the defect-reduction the seed's rewrites aim at.
  ``discount`` < 1 also makes a success after n rephrases worth ``discount**n`` in the
  absorption probabilities (``p_success`` of the rewrite). Default 1.
- **Small counts**: plain frequencies; with ``min_support`` 3 a rewrite lucky in its first uses
  can be published until more data withdraws it (generated population in the tests: 4 of 40
  seeds; none with ``min_support`` 5).
- **Incremental**: after a chain only utterances whose neighbourhood changed are re-decided:
  the chain's and those that reach them (reverse adjacency, most-traversed edges first), at
  most ``max_neighbourhood // 4``, in one solve; one left out keeps its decision until a chain
  touches it. **Hysteresis**: a published rewrite is withdrawn or replaced only when it misses
  a threshold, or another beats it, by more than ``hysteresis`` (no flapping at a threshold).
- **Batched decisions** (``decide_every`` N > 1, opt-in): ``learn_one`` only counts the chain;
  every N chains, and on ``decide()``, what those chains affect is re-decided once per
  utterance against the counts of all of them (chains in learning order, records with the
  last chain's ``ts``): a popular utterance is solved once, not once per chain; triggers come
  up to N chains late. Evictions still withdraw at once. Pending work is not snapshotted:
  ``decide()`` before ``to_dict`` (which refuses otherwise).
- **Memory**: at most ``max_states`` states (least recently seen evicted with their edges and
  support; a rewrite from or to an evicted state is withdrawn), counted in ``evictions``. A
  state's containers exist only once they hold something (``stream.markov.State``): most
  utterances are only ever seen alone.

Complexity per chain of n utterances: O(n^2) count updates, a reverse search of at most
``16 k`` states and one solve over k <= ``max_neighbourhood`` states: O(k^3) (LU) plus O(k^2)
to build Q and R. Memory O(states + transitions + support pairs).

>>> m = RewriteMiner(RewriteConfig(min_support=2))
>>> chains = [["play harry potter", "play harry potter audiobook"]] * 2 + [["play harry potter"]]
>>> outs = [m.learn_one({"device_id": "d", "utterances": c, "ts": i,
...                      "outcome": "success" if len(c) == 2 else "failure"})
...         for i, c in enumerate(chains)]
>>> rec = m.get("Play Harry Potter!")
>>> rec["rewrite"], rec["p_success"], rec["p_success_original"], rec["support"]
('play harry potter audiobook', 1.0, 0.0, 2)
>>> [o.key for batch in outs for o in batch]
['global:play harry potter']
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from stream import markov, records
from stream.markov import State
from stream.rates import beta_interval
from stream.records import Output
from stream.rewrite_config import RewriteConfig, parse_chain
from stream.stats import EngineStats
from stream.text import normalize

LAYERS = ("global", "personal")
_MAX_CHAIN = 32  # longer chains are pathological; their head adds nothing but O(n^2) pairs
_VISIT_FACTOR = 16


class RewriteMiner:
    """One layer of rewrites: ``global`` (all chains) or ``personal`` (one device's chains)."""

    def __init__(self, config: RewriteConfig | None = None, layer: str = "global",
                 device_id: str | None = None, stats: EngineStats | None = None) -> None:
        if layer not in LAYERS or (layer == "personal") != (device_id is not None):
            raise ValueError("layer 'global', or 'personal' with a device_id")
        self.config = config or RewriteConfig()
        self.layer = layer
        self.device_id = device_id
        self.stats = stats
        # Support an entry needs to count towards ``State.strong`` (pooled support).
        self.pool_min = min(self.config.pool_min_support, self.config.min_support)
        # least recently seen first; OrderedDict for O(1) oldest-first eviction
        self.states: OrderedDict[str, State] = OrderedDict()
        self.published: dict[str, dict[str, Any]] = {}
        self.evictions = 0
        # decide_every > 1: the chains learned since the last decision (the seeds of the search
        # for affected utterances; a repeated chain adds nothing: decisions use the counts at
        # decision time), their number and the last ts.
        self._pending: dict[tuple[str, ...], None] = {}
        self._since = 0
        self._pending_ts = 0

    # -- learning --------------------------------------------------------------------------------
    def learn_one(self, chain: Mapping[str, Any]) -> list[Output]:
        """Count one finished chain, re-decide what it affects (with ``decide_every`` N > 1:
        what the last N chains affect, every N chains); returns rewrite-trigger records."""
        return self.learn_parsed(*parse_chain(chain))

    def decide(self) -> list[Output]:
        """Re-decide what the chains learned since the last decision affect (nothing to do
        with ``decide_every`` 1); returns rewrite-trigger records. Nothing is pending after."""
        out: list[Output] = []
        pending, self._pending, self._since = self._pending, {}, 0
        decided: set[str] = set()
        # The counts stay the same until the last decision: orderings derived from them are
        # computed once for all of the searches and solves below.
        memo = markov.Memo()
        for seeds in pending:
            # An evicted utterance has nothing left to decide: its rewrites, and those to it,
            # were withdrawn when it was evicted (as with decide_every 1).
            live = [u for u in seeds if u in self.states]
            if live:
                self._decide_seeds(live, self._pending_ts, out, decided, memo)
        return out

    def learn_parsed(self, utts: list[str], success: bool, ts: int) -> list[Output]:
        """``learn_one`` of a chain ``parse_chain`` accepted."""
        utts = utts[-min(_MAX_CHAIN, self.config.max_states):]
        states = self.states
        for u in utts:
            if u in states:
                states.move_to_end(u)  # most recently seen last (the eviction order)
            else:
                states[u] = State()
        if len(utts) > 1:
            for a, b in zip(utts, utts[1:], strict=False):
                markov.link(states[a], a, states[b], b)
            pool_min = self.pool_min
            for a, b in sorted({(a, b) for i, a in enumerate(utts) for b in utts[i + 1:]
                                if a != b}):
                markov.add_support(states[a], a, states[b], b, pool_min)
        tip = states[utts[-1]]
        tip.succ, tip.fail = tip.succ + success, tip.fail + (not success)
        out: list[Output] = []
        while len(states) > self.config.max_states:
            self._evict(next(iter(states)), ts, out)
        decide_every = self.config.decide_every
        if decide_every == 1:
            self._decide_seeds(utts, ts, out, None)
            return out
        self._pending[tuple(utts)] = None
        self._pending_ts = ts
        self._since += 1
        if self._since >= decide_every:
            out += self.decide()
        return out

    def _decide_seeds(self, seeds: list[str], ts: int, out: list[Output],
                      decided: set[str] | None, memo: markov.Memo | None = None) -> None:
        """Re-decide the candidates among the seeds and the states that reach them (at most
        ``max_neighbourhood // 4``, ``markov.affected``) in one solve, except those in
        ``decided`` (already re-decided in this ``decide()`` against the same counts: deciding
        again could only flip them between two neighbourhood cuts and emit twice)."""
        cap = self.config.max_neighbourhood
        sources = markov.affected(self.states, self.published, seeds, max(1, cap // 4),
                                  _VISIT_FACTOR * cap, self.config.min_support, memo)
        if decided is not None:
            sources = [u for u in sources if u not in decided]
            decided.update(sources)
        # A solve whose sources can none of them change is skipped: same decisions, and the
        # other sources' probabilities only ever come from the solve of the whole group.
        if sources and not all(self._cannot_change(u) for u in sources):
            solved = self.solve(sources, memo)
            for u in sources:
                self._decide(u, solved, ts, out)

    def _evict(self, x: str, ts: int, out: list[Output]) -> None:
        st = self.states.pop(x)
        for q in markov.unlink_evicted(self.states, x, st, self.pool_min):
            if self.published.get(q, {}).get("rewrite") == x:
                self._withdraw(q, ts, out)
        if x in self.published:
            self._withdraw(x, ts, out)
        self.evictions += 1
        if self.stats is not None:
            self.stats.evictions["rewrite_state"] += 1

    def _is_candidate(self, u: str) -> bool:
        return self.states[u].strong >= self.config.min_support or u in self.published

    # -- solving ---------------------------------------------------------------------------------
    def neighbourhood(self, sources: Iterable[str],
                      memo: markov.Memo | None = None) -> list[str]:
        """Up to ``max_neighbourhood`` states reachable from ``sources``, most probable first
        (``memo``: only while no count changes)."""
        return markov.neighbourhood(self.states, sources, self.config.max_neighbourhood, memo)

    def solve(self, sources: Iterable[str], memo: markov.Memo | None = None) -> dict[str, float]:
        """P(success | start at s) for the states of the sources' neighbourhood.

        Only states that reach observed absorptions inside the neighbourhood are solved (the
        others carry no information here); that also makes ``I - Q`` invertible.
        """
        return markov.solve(self.states, self.neighbourhood(sources, memo), self.config.prior,
                            self.config.discount)

    def _cannot_change(self, u: str) -> bool:
        """``_decide(u, ...)`` would change nothing whatever the solve gives: ``u`` has no
        published rewrite, and its own turn-level success is so high that no probability
        (at most 1) clears ``min_gain`` above it. Follows ``_decide``'s rule: change both
        together. About a quarter of the solves late in a long run have only such sources."""
        if u in self.published:
            return False
        p_u = self.states[u].turn_success()  # None once eviction took its only transitions
        return p_u is not None and p_u > 1.0 - self.config.min_gain + 1e-6

    def _decide(self, u: str, solved: dict[str, float], ts: int, out: list[Output]) -> None:
        if not solved:
            return
        cfg, p_u, current = self.config, solved.get(u), self.published.get(u)
        st = self.states[u]
        if p_u is not None:
            # The phrasing's own turn-level success (its first step), not its absorption
            # probability: users who rephrase until they succeed make a bad phrasing absorb
            # almost as well as its rewrite, although every use of it costs a failed turn.
            p_u = st.turn_success()
            assert p_u is not None  # solved: u reaches an observed absorption
            # Hysteresis: a published rewrite stays unless clearly beaten or clearly failing.
            slack = 0.0 if current is None else cfg.hysteresis
            support = st.support
            ranked = sorted((-solved[r], -c, r) for r, c in support.items()
                            if c >= cfg.min_support and r in solved)
            pick = self._pick(ranked, solved, current, p_u, slack)
            if pick is None and self.pool_min < cfg.min_support:
                pick = self._pick(self._pooled(st, solved, p_u, slack), solved, current, p_u,
                                  slack)
            if pick is not None:
                p_r, r = pick
                rec = self._record(u, r, p_r, p_u, support[r], ts)
                if current is None or current["rewrite"] != r:
                    self.published[u] = rec
                    self._emit(out, u, dict(rec))
                else:  # same rewrite: fresher numbers for lookups, nothing to announce
                    current.update(p_success=rec["p_success"], support=rec["support"],
                                   p_success_original=rec["p_success_original"])
                return
        if current is not None:
            self._withdraw(u, ts, out, p_u)

    def _pick(self, ranked: list[tuple[float, int, str]], solved: dict[str, float],
              current: dict[str, Any] | None, p_u: float,
              slack: float) -> tuple[float, str] | None:
        """The best of ``ranked`` (or the published rewrite, if among them and within the
        hysteresis of the best) when it passes the thresholds, else None."""
        if not ranked:
            return None
        cfg = self.config
        p_r, r = -ranked[0][0], ranked[0][2]
        if current is not None:
            cur = current["rewrite"]
            if cur != r and cur in solved and p_r - solved[cur] <= slack and any(
                    x == cur for _, _, x in ranked):
                p_r, r = solved[cur], cur
        if p_r >= cfg.min_p_success - slack and p_r - p_u >= cfg.min_gain - slack - 1e-9:
            return p_r, r
        return None

    def _pooled(self, st: State, solved: dict[str, float], p_u: float,
                slack: float) -> list[tuple[float, int, str]]:
        """Pooled evidence, when no single rewrite has ``min_support`` chains: users often
        fix a broken phrasing with several good ones (a misheard "geve me a 10 minute
        countdown" with 4, 3 and 1 chains to three timer requests). The rewrites that recur
        (``pool_min_support`` chains each) and pass the thresholds on their absorption
        probability and on their first-try success (persistent users make a bad phrasing
        absorb well too), taken at the low end of its interval (a handful of lucky plays does
        not show that a phrasing works), ranked as usual if they have ``min_support`` chains
        together (a chain through two of them counts for both); else empty."""
        cfg, states = self.config, self.states
        min_p, min_gain = cfg.min_p_success - slack, cfg.min_gain - slack - 1e-9
        good: list[tuple[float, int, str]] = []
        chains = 0
        for r, c in st.support.items():
            p_r = solved.get(r)
            if c < self.pool_min or p_r is None:
                continue
            target = states[r]
            # the low end of the 95% Beta interval defect rates are published with
            p_first = min(p_r, 1.0 - beta_interval(target.observed() - target.succ,
                                                   target.succ)[1])
            if p_first >= min_p and p_first - p_u >= min_gain:
                good.append((-p_r, -c, r))
                chains += c
        return sorted(good) if chains >= cfg.min_support else []

    def withdraw_all(self, ts: int, out: list[Output]) -> None:
        """Withdraw every published rewrite (the layer drops this miner)."""
        for u in list(self.published):
            self._withdraw(u, ts, out)

    def _withdraw(self, u: str, ts: int, out: list[Output], p_u: float | None = None) -> None:
        del self.published[u]
        rec = self._record(u, None, None, p_u, 0, ts)
        self._emit(out, u, rec)

    def _emit(self, out: list[Output], u: str, rec: dict[str, Any]) -> None:
        if self.stats is not None:
            self.stats.signals["rewrite_trigger"] += 1
        out.append(records.rewrite_trigger(rec))

    def _record(self, u: str, r: str | None, p_r: float | None, p_u: float | None, sup: int,
                ts: int) -> dict[str, Any]:
        return records.rewrite(u, r, self.layer, self.device_id, p_r, p_u, sup, ts)

    # -- queries and state -----------------------------------------------------------------------
    def get(self, utterance: str) -> dict[str, Any] | None:
        """The published rewrite record of ``utterance`` (normalised here), or None."""
        rec = self.published.get(normalize(utterance))
        return None if rec is None else dict(rec)

    def state_sizes(self) -> dict[str, int]:
        sts = self.states.values()
        return {"states": len(self.states), "transitions": sum(len(st.out) for st in sts),
                "support_pairs": sum(len(st.support) for st in sts),
                "published": len(self.published)}

    def to_dict(self, with_config: bool = True) -> dict[str, Any]:
        """A JSON-able snapshot. Pending decisions are not part of it: ``decide()`` first."""
        if self._since:
            raise RuntimeError("pending rewrite decisions: call decide() before to_dict()")
        data: dict[str, Any] = {
            "layer": self.layer, "device_id": self.device_id,
            # ``or {}``: an empty container is a shared read-only sentinel (``markov.State``)
            "states": [[u, st.out or {}, st.succ, st.fail, st.support or {}]
                       for u, st in self.states.items()],
            "published": self.published, "evictions": self.evictions,
        }
        if with_config:
            data["config"] = dataclasses.asdict(self.config)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], stats: EngineStats | None = None,
                  config: RewriteConfig | None = None) -> RewriteMiner:
        config = config or RewriteConfig(**data["config"])
        miner = cls(config, data["layer"], data["device_id"], stats)
        markov.load(miner.states, data["states"], miner.pool_min)
        miner.published = {u: dict(rec) for u, rec in data["published"].items()}
        miner.evictions = data["evictions"]
        return miner
