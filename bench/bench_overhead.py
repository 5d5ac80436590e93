"""What the plugin costs, as ratios measured in one run (no absolute targets: machines are shared and noisy).

1. Unmarked tests must pay (almost) nothing: a suite of unmarked tests that emit GenAI spans, run with the
   plugin enabled vs ``--tokenbudget-disable``.
2. Span capture and normalisation for marked tests: spans emitted with the processor active vs a bare SDK
   provider, and the time to normalise + analyse them per span.

Run: ``python bench/bench_overhead.py [--tests 300] [--spans 2000]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """
import pytest
from opentelemetry import trace

tracer = trace.get_tracer("bench")

@pytest.mark.parametrize("i", range({tests}))
def test_unmarked(i):
    for _ in range(20):
        with tracer.start_as_current_span("chat", attributes={{"gen_ai.operation.name": "chat",
                "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2}}):
            pass
"""


def time_suite(directory: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(directory), *extra],
        check=True,
        capture_output=True,
        cwd=directory,
    )
    return time.perf_counter() - start


def bench_unmarked(tests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "conftest.py").write_text(
            "from opentelemetry import trace\nfrom opentelemetry.sdk.trace import TracerProvider\n"
            "trace.set_tracer_provider(TracerProvider())\n"
        )
        (directory / "test_bench.py").write_text(SUITE.format(tests=tests))
        disabled = min(time_suite(directory, "--tokenbudget-disable") for _ in range(3))
        enabled = min(time_suite(directory) for _ in range(3))
    print(f"unmarked suite ({tests} tests x 20 spans): enabled/disabled wall time = {enabled / disabled:.3f}")


def bench_capture(spans: int) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from pytest_tokenbudget.capture import _GatedProcessor
    from pytest_tokenbudget.measure import measure
    from pytest_tokenbudget.spans import normalise

    def emit(provider: TracerProvider) -> float:
        tracer = provider.get_tracer("bench")
        start = time.perf_counter()
        for i in range(spans):
            with tracer.start_as_current_span(
                "anthropic.messages.create",
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "anthropic",
                    "gen_ai.response.id": f"msg_{i}",
                    "gen_ai.request.model": "claude-sonnet-4-6",
                    "gen_ai.usage.input_tokens": 1200,
                    "gen_ai.usage.output_tokens": 80,
                    "gen_ai.usage.cache_read.input_tokens": 1000,
                },
            ):
                pass
        return time.perf_counter() - start

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    bare = TracerProvider()
    base = min(emit(bare) for _ in range(3))
    exporter = InMemorySpanExporter()
    processor = _GatedProcessor(exporter)
    gated = TracerProvider()
    gated.add_span_processor(processor)
    idle = min(emit(gated) for _ in range(3))
    processor.active = True
    exporter.clear()
    active = emit(gated)
    captured = exporter.get_finished_spans()
    start = time.perf_counter()
    normalise(captured)
    normalise_time = time.perf_counter() - start
    start = time.perf_counter()
    measure(captured)
    measure_time = time.perf_counter() - start
    print(f"span emission, processor idle (unmarked test) / no processor = {idle / base:.3f}")
    print(f"span emission, processor capturing (marked test) / no processor = {active / base:.3f}")
    print(f"normalise / emission time for {len(captured)} spans = {normalise_time / active:.3f}")
    print(f"measure (normalise+price+detectors) / emission time = {measure_time / active:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--spans", type=int, default=2000)
    args = parser.parse_args()
    bench_unmarked(args.tests)
    bench_capture(args.spans)


if __name__ == "__main__":
    main()
