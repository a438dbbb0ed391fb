"""Webhooks: tell a job's owner when it ends (and, if asked, at each checkpoint) with a signed POST.

- Target: the job's own `webhook_url` (create field, with optional `webhook_events`), else its API key's
  default (`python -m tuning_service keys set-webhook`). Each key has a signing secret (`whsec_...`), shown
  once when it is made; it is stored as is, because every delivery is signed with it.
- Outbox (outbox.py): the event is written to `webhook_deliveries` by the append hook, inside the very
  transaction that appends the terminal `status` record (or the trainer's `checkpoint` record), so an event
  is never lost and never recorded twice, whichever worker or restart follows. `Deliverer` (delivery.py, one
  per worker, started with the manager) claims due deliveries with a conditional UPDATE checked by rowcount
  (a lease: a worker that dies mid-attempt is retried after it), POSTs them, and records every attempt as a
  job record of type `webhook` (GET /v1/tunings.events).
- Signature: `Tuning-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, fresh `t` per
  attempt (tuning_sdk.webhooks.verify_signature checks it). 2xx = delivered; 4xx other than 408/429 =
  refused for good; anything else (5xx, 408, 429, 3xx, timeouts, connection errors) is retried with
  exponential backoff and jitter until TUNING_WEBHOOK_RETRY_SECONDS after the event.
- Only http(s) URLs to public addresses: private, loopback, link-local, CGNAT, multicast... addresses are
  refused (unless inside TUNING_WEBHOOK_ALLOW_NETWORKS): at create for a literal address or a name that
  resolves to one (422, param `webhook_url`), and again at every attempt, where the connection goes to the
  very address that was checked (no second DNS answer can swap in a private one: DNS rebinding).
"""
