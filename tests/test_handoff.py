"""offer(): producers hand items to a bounded queue and never stay blocked once told to stop."""

import queue
import threading

from mmsearch.handoff import offer


def test_offer_waits_for_room_while_the_reader_reads() -> None:
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    stop = threading.Event()
    q.put(0)
    reader = threading.Timer(0.2, q.get)
    reader.start()
    assert offer(q, 1, stop, poll=0.02)  # full at first: waits until the reader takes the 0
    reader.join()
    assert q.get_nowait() == 1


def test_offer_gives_up_on_a_full_queue_once_stopped() -> None:
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    stop = threading.Event()
    q.put(0)
    done: list[bool] = []
    producer = threading.Thread(target=lambda: done.append(offer(q, 1, stop, poll=0.02)))
    producer.start()
    producer.join(0.2)
    assert producer.is_alive() and not done  # still waiting for room
    stop.set()
    producer.join(5)
    assert done == [False] and q.get_nowait() == 0 and q.empty()
