"""Collect the spans that finish while a marked test runs, without disturbing the application's tracing.

One `SpanCapture` per process. It joins the global tracer provider the application installed (adding a
processor, never replacing the provider, so the application's own exporters keep working); when there is
none, it installs an SDK provider. Outside a marked test the processor drops spans at once, so unmarked
tests pay nothing but one attribute check per span.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

CONTENT_MODE_ENV = "ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE"


class CaptureError(RuntimeError):
    """The global tracer provider cannot take a span processor."""


class _GatedProcessor(SpanProcessor):
    """Exports to the in-memory exporter only while a test is being captured."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.active = False
        self._inner = SimpleSpanProcessor(exporter)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            self._inner.on_end(span)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def enable_content_mode() -> bool:
    """Ask the anthropic SDK to record output text and tool calls on its spans.

    The SDK reads the variable when a client is constructed, so this must run before tests build clients.
    A client given an explicit ``open_telemetry=`` option ignores the environment: its content mode is its own.
    Returns False when the user already chose a mode, which is respected.
    """
    if os.environ.get(CONTENT_MODE_ENV):
        return False
    os.environ[CONTENT_MODE_ENV] = "content"
    return True


class SpanCapture:
    """The per-process span collector. `attach` is idempotent and lazy: it runs at the first marked test."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self._processor = _GatedProcessor(self.exporter)
        self._attached_to: object | None = None
        self.installed_provider = False

    def attach(self) -> None:
        provider = trace.get_tracer_provider()
        if provider is self._attached_to:
            return
        add = getattr(provider, "add_span_processor", None)
        if add is None:
            # No SDK provider yet (the API's proxy): install one. If the application installs its own later,
            # OpenTelemetry refuses to replace ours, so we attach again (to whatever is current) each test.
            if isinstance(provider, trace.ProxyTracerProvider):
                sdk_provider = TracerProvider()
                trace.set_tracer_provider(sdk_provider)
                provider = trace.get_tracer_provider()
                self.installed_provider = provider is sdk_provider
                add = getattr(provider, "add_span_processor", None)
            if add is None:
                raise CaptureError(
                    f"the global OpenTelemetry tracer provider ({type(provider).__name__}) cannot take a span "
                    "processor; install an opentelemetry-sdk TracerProvider (or pass --tokenbudget-disable)"
                )
        add(self._processor)
        self._attached_to = provider

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Collect spans for the duration of the block (one test's setup, call and teardown)."""
        self.attach()
        self.exporter.clear()
        self._processor.active = True
        try:
            yield
        finally:
            self._processor.active = False

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()
