"""Prometheus metrics of the server (``GET /metrics``), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                    1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    def __init__(self, model_name: str):
        r = self.registry = CollectorRegistry()
        lbl = {"model_name": model_name}
        self._lbl = lbl
        ln = list(lbl)
        self.requests = Counter("mamba2_requests", "Finished requests by outcome", ln + ["outcome"], registry=r)
        self.prompt_tokens = Counter("mamba2_prompt_tokens", "Prompt tokens of admitted requests", ln, registry=r)
        self.generation_tokens = Counter("mamba2_generation_tokens", "Generated tokens", ln, registry=r)
        self.ttft = Histogram("mamba2_time_to_first_token_seconds", "Submission to first generated token", ln,
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("mamba2_inter_token_latency_seconds",
                             "Time per generated token after the first (a dispatch's interval over its tokens)", ln,
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.slots_busy = Gauge("mamba2_slots_busy", "State slots holding a request", ln, registry=r)
        self.slots_total = Gauge("mamba2_slots_total", "State slots", ln, registry=r)
        self.queue_depth = Gauge("mamba2_queue_depth", "Requests waiting for a slot", ln, registry=r)
        self.pc_hits = Counter("mamba2_prefix_cache_hits", "Requests that restored a cached prefix state", ln,
                               registry=r)
        self.pc_misses = Counter("mamba2_prefix_cache_misses", "Requests with no cached prefix", ln, registry=r)
        self.pc_hit_tokens = Counter("mamba2_prefix_cache_hit_tokens", "Prompt tokens restored, not prefilled",
                                     ln, registry=r)
        self.pc_bytes = Gauge("mamba2_prefix_cache_bytes", "Bytes of cached prefix states", ln, registry=r)
        for outcome in ("ok", "error", "aborted"):
            self.requests.labels(**lbl, outcome=outcome)
        for m in (self.prompt_tokens, self.generation_tokens, self.pc_hits, self.pc_misses, self.pc_hit_tokens):
            m.labels(**lbl)

    def _l(self, m):
        return m.labels(**self._lbl)

    # hooks called by the engine (scheduler thread)
    def prefix_lookup(self, hit_length: int | None) -> None:
        if hit_length is None:
            self._l(self.pc_misses).inc()
        else:
            self._l(self.pc_hits).inc()
            self._l(self.pc_hit_tokens).inc(hit_length)

    def tokens(self, req, n: int, now: float, prev: float | None) -> None:
        self._l(self.generation_tokens).inc(n)
        if prev is None:
            self._l(self.ttft).observe(now - req.t_submit)
            n -= 1
            prev = now
        if n > 0:
            per = (now - prev) / n
            h = self._l(self.itl)
            for _ in range(n):
                h.observe(per)

    def finished(self, req, reason: str) -> None:
        outcome = {"error": "error", "abort": "aborted"}.get(reason, "ok")
        self.requests.labels(**self._lbl, outcome=outcome).inc()
        if req.t_first is not None or reason != "abort":
            self._l(self.prompt_tokens).inc(len(req.prompt))

    def gauges(self, busy: int, total: int, waiting: int, prefix_bytes: int) -> None:
        self._l(self.slots_busy).set(busy)
        self._l(self.slots_total).set(total)
        self._l(self.queue_depth).set(waiting)
        self._l(self.pc_bytes).set(prefix_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
