"""daemon.kafka.follow.Behind: how far a follower of a state topic is behind its end, in records and in seconds since
it last had applied everything the topic held. Pure: ends, times and positions given."""

from __future__ import annotations

from daemon.kafka.follow import Behind


def test_a_reader_that_reaches_the_end_reported_is_caught_up_as_of_that_report() -> None:
    b = Behind()
    assert b.seconds(100.0) is None  # nothing observed: never caught up
    b.observe(0, end=10, seen=100.0, position=4)
    assert (b.records, b.seconds(101.0)) == (6, None)
    b.observe(0, end=10, seen=100.5, position=10)
    assert (b.records, b.seconds(101.0)) == (0, 0.5)  # caught up as of the end's latest report, not of now
    b.observe(0, end=10, seen=102.0, position=10)  # the same end, reported again
    assert b.seconds(102.25) == 0.25


def test_a_reader_that_hears_nothing_falls_behind_though_it_knows_of_no_record_it_lacks() -> None:
    b = Behind()
    b.observe(0, end=3, seen=10.0, position=3)
    # Fetches failing, the partition paused, the task gone: no report, so no moment it is known caught up.
    assert (b.records, b.seconds(25.0)) == (0, 15.0)


def test_under_a_steady_stream_of_writes_a_reader_that_keeps_up_stays_caught_up_as_of_its_last_report() -> None:
    b = Behind()
    for step in range(1, 1000):  # each fetch reports a new end; the records up to the previous one are applied
        b.observe(0, end=step * 5, seen=float(step), position=(step - 1) * 5)
        if step > 1:
            assert b.seconds(float(step)) == 1.0 and b.records == 5


def test_the_seconds_are_those_of_the_partition_furthest_behind() -> None:
    b = Behind()
    b.observe(0, end=5, seen=10.0, position=5)
    b.observe(1, end=8, seen=10.0, position=2)
    assert b.seconds(11.0) is None  # partition 1 never caught up
    b.observe(1, end=8, seen=12.0, position=8)
    b.observe(0, end=5, seen=13.0, position=5)
    assert (b.records, b.seconds(14.0)) == (0, 2.0)


def test_ends_not_reached_are_kept_bounded_and_dropping_them_only_overstates_the_lag() -> None:
    b = Behind()
    for end in range(1, 5001):
        b.observe(0, end=end, seen=float(end), position=0)
    b.observe(0, end=5000, seen=5000.0, position=2500)  # reached ends whose marks were dropped: not caught up
    assert b.seconds(5000.0) is None
    b.observe(0, end=5000, seen=5001.0, position=5000)
    assert b.seconds(5001.0) == 0.0
