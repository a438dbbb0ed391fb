"""The caches of tunings.get / tunings.list (jobcache.py), on their own; over HTTP: test_routes_jobs.py."""

from __future__ import annotations

from tuning_service.api.jobcache import EncodedJobs, EncodedPages


def test_the_cache_keeps_only_terminal_jobs_read_in_their_stamped_state_and_stays_bounded() -> None:
    cache = EncodedJobs(max_bytes=16 * 100)
    body = b"x" * 100
    cache.put("ftjob-a", "running", None, {"status": "running"}, body, owner="k")
    assert cache.get("ftjob-a", "running", None) is None  # a live job is never kept
    cache.put("ftjob-a", "succeeded", 5.0, {"status": "running"}, body, owner="k")  # read in another state
    assert cache.get("ftjob-a", "succeeded", 5.0) is None
    cache.put("ftjob-a", "succeeded", 5.0, {"status": "succeeded"}, body, owner="k")
    assert cache.get("ftjob-a", "succeeded", 5.0) == body
    assert cache.get("ftjob-a", "succeeded", 6.0) is None  # finished again (after a resume)
    assert cache.get("ftjob-a", "failed", 5.0) is None
    for i in range(40):
        cache.put(f"ftjob-{i}", "failed", 1.0, {"status": "failed"}, body, owner="k")
    assert cache.size <= 16 * 100
    assert cache.get("ftjob-39", "failed", 1.0) == body and cache.get("ftjob-0", "failed", 1.0) is None
    cache.put("ftjob-big", "failed", 1.0, {"status": "failed"}, b"y" * 200, owner="k")  # over max_bytes / 16
    assert cache.get("ftjob-big", "failed", 1.0) is None


def test_an_entry_is_current_only_at_the_data_version_its_stamp_was_read_and_for_its_owner() -> None:
    cache = EncodedJobs()
    body = b"{}"
    cache.put("ftjob-a", "succeeded", 5.0, {"status": "succeeded"}, body, owner="key-1", version=7)
    assert cache.current("ftjob-a", "key-1", 7) == body
    assert cache.current("ftjob-a", "key-1", 8) is None  # something was committed since: read the stamp
    assert cache.current("ftjob-a", "key-2", 7) is None  # another key's request never skips the check
    assert cache.current("ftjob-a", "key-1", None) is None  # no version known: always read the stamp
    assert cache.current("ftjob-b", "key-1", 7) is None
    cache.confirm("ftjob-a", 8)  # the stamp read at version 8 matched
    assert cache.current("ftjob-a", "key-1", 8) == body and cache.current("ftjob-a", "key-1", 7) is None
    cache.put("ftjob-a", "succeeded", 5.0, {"status": "succeeded"}, body, owner="key-1")  # from a list page
    assert cache.current("ftjob-a", "key-1", 8) is None


def test_a_page_is_served_only_at_the_version_it_was_built_at_and_pages_stay_bounded() -> None:
    pages = EncodedPages(max_bytes=4 * 100)
    key = ("key-1", None, None, 20)
    pages.put(key, 3, b"a" * 100)
    assert pages.get(key, 3) == b"a" * 100
    assert pages.get(key, 4) is None  # something was committed since
    assert pages.get(key, None) is None and pages.get(("key-2", None, None, 20), 3) is None
    pages.put(("key-1", "succeeded", None, 20), None, b"b")  # no version known: never kept
    assert pages.get(("key-1", "succeeded", None, 20), None) is None
    pages.put(key, 4, b"c" * 100)  # rebuilt at the new version: replaces the old page
    assert pages.get(key, 4) == b"c" * 100 and pages.size == 100
    for i in range(10):
        pages.put(("key-1", None, f"ftjob-{i}", 20), 4, b"d" * 100)
    assert pages.size <= 4 * 100 and pages.get(key, 4) is None  # the oldest went first
    assert pages.get(("key-1", None, "ftjob-9", 20), 4) == b"d" * 100
    pages.put(("key-1", None, None, 100), 4, b"e" * 101)  # over max_bytes / 4: not kept
    assert pages.get(("key-1", None, None, 100), 4) is None
