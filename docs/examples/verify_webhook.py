"""Receiving jwtwatch webhooks: verify every delivery with the `standardwebhooks` library before trusting it.

pip install standardwebhooks starlette uvicorn
JWTWATCH_WEBHOOK_SECRET=whsec_... python verify_webhook.py     # then subscribe http://<this host>:9000/jwtwatch
"""

import os
from collections.abc import Callable
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def receiver(secret: str, handle: Callable[[dict[str, Any]], None]) -> Starlette:
    """An app that hands every verified event to ``handle`` once, and refuses anything else with 400."""
    webhook = Webhook(secret)  # the "whsec_..." secret jwtwatch returned when you subscribed
    seen: set[str] = set()  # webhook-id is the same on every retry; keep it in your database in production

    async def deliveries(request: Request) -> Response:
        body = await request.body()  # verify the exact bytes received, before parsing anything
        try:
            event = webhook.verify(body, dict(request.headers))  # checks signature and a ±5 min timestamp
        except WebhookVerificationError:
            return Response(status_code=400)
        if request.headers["webhook-id"] not in seen:
            seen.add(request.headers["webhook-id"])
            handle(event)  # {"type": ..., "timestamp": ..., "data": alert/1 or revocation/1}
        return Response(status_code=204)  # any 2xx: delivered; 410: unsubscribe me; else: retried later

    return Starlette(routes=[Route("/jwtwatch", deliveries, methods=["POST"])])


def show(event: dict[str, Any]) -> None:
    data = event["data"]
    if event["type"] == "token.anomaly":  # alert/1; "summary" is one line for a person (older alerts lack it)
        print(f"{data['severity']} alert: {data.get('summary') or data['entity']} (action {data['action']})")
    elif event["type"] == "token.revoked":  # revocation/1
        print(f"revoked {data['kind']} {data['value']} ({data['reason']})")
    elif event["type"] == "revocation.storm":  # the circuit breaker stopped auto-revocation
        print(f"revocation storm: {data['reasons']}")


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(receiver(os.environ["JWTWATCH_WEBHOOK_SECRET"], show), host="0.0.0.0", port=9000)  # noqa: S104
