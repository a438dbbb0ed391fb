"""SSE parsing, and stream_logs resuming after dropped connections without repeating or losing a record."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.sdk.objects import log_page, record
from tests.sdk.stub import Handler, Recorded, StubServer, error, job_body, reply
from tuning_sdk import APIConnectionError, NotFoundError, TuningClient
from tuning_sdk._streaming import ServerSentEvent, iter_lines, iter_sse

STREAM = (
    b": hello\n\n"
    b'id: 1\nevent: metrics\ndata: {"seq": 1}\n\n'
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"id: 3\rdata:no-space\r\r"
    b"event: lonely\n\n"  # no data: not dispatched
    b"retry: 1500\ndata:\n\n"  # empty data line: dispatched with ""
    b"data: incomplete"  # no terminator: never dispatched
)


def _events(chunks: list[bytes]) -> list[ServerSentEvent]:
    return [e for e in iter_sse(chunks) if e is not None]


def test_sse_parser_follows_the_spec() -> None:
    events = _events([STREAM])
    assert events == [
        ServerSentEvent("metrics", '{"seq": 1}', "1", None),
        ServerSentEvent("message", "line one\nline two", "1", None),  # the id persists
        ServerSentEvent("message", "no-space", "3", None),
        ServerSentEvent("message", "", "3", 1500),
    ]
    assert list(iter_sse([b": heartbeat\n\n"])) == [None]  # comments are ticks for the reader


def test_sse_parser_is_indifferent_to_chunk_boundaries() -> None:
    whole = _events([STREAM])
    for cut in range(1, len(STREAM)):
        assert _events([STREAM[:cut], STREAM[cut:]]) == whole, cut
    assert _events([bytes([b]) for b in STREAM]) == whole


def test_iter_lines_crlf_split_across_chunks() -> None:
    assert list(iter_lines([b"a\r", b"\nb\r", b"c\n"])) == ["a", "b", "c"]
    assert list(iter_lines([b"caf\xc3", b"\xa9\n"])) == ["café"]


# ---- a stub log stream ---------------------------------------------------------------------------------


def _record(seq: int, total: int) -> dict[str, Any]:
    if seq == total:
        return record(seq, "status", status="succeeded", message="training completed")
    return record(seq, "metrics", step=seq, loss=1.0 / seq)


def _sse(rec: dict[str, Any]) -> str:
    return f"id: {rec['seq']}\nevent: {rec['type']}\ndata: {json.dumps(rec)}\n\n"


class LogServer:
    """Serves records 1..total; connection i is cut after cuts[i] records (then mid-event)."""

    def __init__(
        self, stub: StubServer, total: int, cuts: list[int], *, replay: int = 0, clean: bool = False
    ):
        self.total = total
        self.cuts = list(cuts)
        self.replay = replay  # resend this many already-sent records after a reconnect
        self.clean = clean  # end cut streams cleanly (terminating chunk) instead of aborting
        self.last_event_ids: list[str | None] = []
        stub.route("GET", "/v1/tunings.logs/", self.logs)
        stub.route("GET", "/v1/tunings.get/", self.job)
        self.sent_up_to = 0

    def job(self, h: Handler, req: Recorded) -> None:
        done = self.sent_up_to >= self.total
        h.send_json(200, job_body(status="succeeded" if done else "running"))

    def logs(self, h: Handler, req: Recorded) -> None:
        if req.query.get("follow") != ["true"]:
            after = int(req.query.get("after", ["0"])[0])
            data = [_record(s, self.total) for s in range(after + 1, self.total + 1)]
            h.send_json(200, log_page(data[:3], has_more=len(data) > 3, after=after))
            return
        last = req.header("Last-Event-ID")
        self.last_event_ids.append(last)
        start = int(last or req.query.get("after", ["0"])[0]) + 1
        start = max(1, start - self.replay)
        h.start_stream()
        h.chunk(": heartbeat\n\n")
        cut = self.cuts.pop(0) if self.cuts else None
        for n, seq in enumerate(range(start, self.total + 1)):
            if cut is not None and n == cut:
                if self.clean:
                    h.end_stream()
                else:
                    h.chunk(_sse(_record(seq, self.total))[:15])  # half an event, then the line goes dead
                    h.abort()
                return
            h.chunk(_sse(_record(seq, self.total)))
            self.sent_up_to = max(self.sent_up_to, seq)
        h.end_stream()


@pytest.fixture
def fast_retries(sleeps: list[float]) -> list[float]:
    return sleeps


def test_stream_resumes_after_drops_without_repeats_or_gaps(
    stub: StubServer, client: TuningClient, fast_retries: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tuning_sdk")
    server = LogServer(stub, total=12, cuts=[4, 0, 3])
    seqs = [r.seq for r in client.tunings.stream_logs("ftjob-1")]
    assert seqs == list(range(1, 13))
    assert server.last_event_ids == [None, "4", "4", "7"]
    resumed = [r.getMessage() for r in caplog.records if "resuming after seq" in r.getMessage()]
    assert len(resumed) == 3 and "resuming after seq 7" in resumed[-1]


def test_stream_drops_records_the_server_sends_twice(
    stub: StubServer, client: TuningClient, fast_retries: list[float]
) -> None:
    LogServer(stub, total=8, cuts=[5], replay=3)
    assert [r.seq for r in client.tunings.stream_logs("ftjob-1")] == list(range(1, 9))


def test_clean_close_before_the_end_is_resumed(
    stub: StubServer, client: TuningClient, fast_retries: list[float]
) -> None:
    server = LogServer(stub, total=6, cuts=[2], clean=True)
    assert [r.seq for r in client.tunings.stream_logs("ftjob-1")] == list(range(1, 7))
    assert server.last_event_ids == [None, "2"]


def test_stream_of_an_ended_job_finishes_from_the_paged_endpoint(
    stub: StubServer, client: TuningClient, fast_retries: list[float]
) -> None:
    # The job is over, and the stream closes at once (e.g. we started after its last event):
    # the remaining records come from the list endpoint, then iteration stops.
    stub.route("GET", "/v1/tunings.get/", reply(200, job_body(status="failed")))

    def empty_stream(h: Handler, req: Recorded) -> None:
        if req.query.get("follow") == ["true"]:
            h.start_stream()
            h.end_stream()
        else:
            after = int(req.query["after"][0])
            data = [record(s, "log", line=f"l{s}") for s in range(after + 1, 5)]
            h.send_json(200, log_page(data, after=after))

    stub.route("GET", "/v1/tunings.logs/", empty_stream)
    assert [r["line"] for r in client.tunings.stream_logs("ftjob-1", after=1)] == ["l2", "l3", "l4"]


def test_non_follow_pages_through_all_records(stub: StubServer, client: TuningClient) -> None:
    LogServer(stub, total=8, cuts=[])
    recs = list(client.tunings.stream_logs("ftjob-1", follow=False))
    assert [r.seq for r in recs] == list(range(1, 9))
    afters = [c.query["after"][0] for c in stub.calls("GET", "/v1/tunings.logs/")]
    assert afters == ["0", "3", "6"]


def test_stream_errors(
    stub: StubServer, client: TuningClient, fast_retries: list[float], monkeypatch
) -> None:
    stub.route("GET", "/v1/tunings.logs/", error(404, "job_not_found"))
    with pytest.raises(NotFoundError):
        list(client.tunings.stream_logs("ftjob-x"))

    # A stream that keeps failing gives up after the reconnect window.
    from tuning_sdk.resources import tunings

    monkeypatch.setattr(tunings, "RECONNECT_WINDOW", 0.0)
    stub.route("GET", "/v1/tunings.logs/", error(503, "internal_error"))
    with pytest.raises(APIConnectionError, match="could not be resumed"):
        list(client.tunings.stream_logs("ftjob-1"))
