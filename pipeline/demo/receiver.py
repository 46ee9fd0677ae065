"""The demo's webhook receiver: a FastAPI app that accepts only correctly signed Standard Webhooks.

It checks each delivery with the ``standardwebhooks`` library (as any subscriber would: signature over
``id.timestamp.body`` with the ``whsec_`` secret, timestamp within tolerance), answers 401 to anything
else, and keeps what it received for the demo's live view and report.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook, WebhookVerificationError

PATH = "/hooks/jwtwatch"


@dataclass
class Delivery:
    msg_id: str
    type: str
    data: dict[str, Any]
    received_at: float  # monotonic


@dataclass
class WebhookReceiver:
    secret: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    verified: int = 0
    refused: int = 0
    duplicates: int = 0
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI(title="demo webhook receiver", openapi_url=None, docs_url=None, redoc_url=None)

        @app.post(PATH)
        async def receive(request: Request) -> Response:
            body = await request.body()
            try:
                if self.secret is None:
                    raise WebhookVerificationError("no secret yet")
                message = Webhook(self.secret).verify(body, dict(request.headers))
            except WebhookVerificationError:
                with self._lock:
                    self.refused += 1
                return Response(status_code=401)
            self._keep(request.headers["webhook-id"], message if isinstance(message, dict) else orjson.loads(body))
            return Response(status_code=204)

        return app

    def _keep(self, msg_id: str, message: dict[str, Any]) -> None:
        with self._lock:
            self.verified += 1
            if msg_id in self._seen:  # a retry of something already received: the id says so
                self.duplicates += 1
                return
            self._seen.add(msg_id)
            self.deliveries.append(
                Delivery(msg_id, message.get("type", "?"), message.get("data", {}), time.monotonic())
            )

    def of_type(self, event_type: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.type == event_type]
