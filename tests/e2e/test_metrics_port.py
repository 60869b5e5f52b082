"""METRICS_PORT: Prometheus metrics on a port of their own, so the webhook port need not expose them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.redis_space import RedisSpace

from .conftest import Deployment, Sink, low_stock

pytestmark = pytest.mark.e2e


async def test_serve_with_metrics_port_serves_metrics_there_and_not_on_the_webhook_port(
    tmp_path: Path, sink: Sink
) -> None:
    deployment = Deployment(tmp_path, sink, f"sqlite+aiosqlite:///{tmp_path / 'stockaj-rules.db'}", None)
    deployment.env["METRICS_PORT"] = "0"  # a free port: serve says which
    try:
        serve = await deployment.start_serve()
        metrics_url = await serve.announced("metrics on ")
        await deployment.accept("counted-1", low_stock(1))
        on_metrics_port = await deployment.http.get(metrics_url)
        on_webhook_port = await deployment.http.get(f"{deployment.url}/metrics")
        webhook_on_metrics_port = await deployment.http.post(
            metrics_url.replace("/metrics", "/webhooks/stockaj")
        )
    finally:
        await deployment.close()

    assert on_metrics_port.status_code == 200
    assert on_metrics_port.headers["content-type"].startswith("text/plain")
    assert 'stockaj_deliveries_received_total{event="item.low_stock",outcome="accepted"} 1.0' in (
        on_metrics_port.text
    )
    assert on_webhook_port.status_code == 404
    assert set(on_webhook_port.json()) == {"error"}
    assert webhook_on_metrics_port.status_code == 404


async def test_serve_without_metrics_port_serves_metrics_on_the_webhook_port(
    tmp_path: Path, sink: Sink
) -> None:
    deployment = Deployment(tmp_path, sink, f"sqlite+aiosqlite:///{tmp_path / 'stockaj-rules.db'}", None)
    try:
        await deployment.start_serve()
        answer = await deployment.http.get(f"{deployment.url}/metrics")
    finally:
        await deployment.close()

    assert answer.status_code == 200
    assert "stockaj_deliveries_received_total" in answer.text


@pytest.mark.redis
async def test_worker_reads_metrics_port_when_no_option_is_given(
    tmp_path: Path, sink: Sink, redis_space: RedisSpace
) -> None:
    deployment = Deployment(
        tmp_path, sink, f"sqlite+aiosqlite:///{tmp_path / 'stockaj-rules.db'}", redis_space
    )
    deployment.env["METRICS_PORT"] = "0"
    try:
        deployment.cli("db", "upgrade")
        worker = deployment.start_worker(metrics_port_option=False)  # METRICS_PORT it is
        await deployment.wait_workers()
        answer = await deployment.http.get(worker.metrics_url)
    finally:
        await deployment.close()

    assert answer.status_code == 200
    assert "stockaj_deliveries_processed_total" in answer.text
    assert "Traceback" not in worker.log()
