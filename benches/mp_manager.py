"""Python's Manager-served queue baseline for procq's remote benchmark.

Usage: python3 mp_manager.py ITEMS
A BaseManager server process serves a queue.Queue over TCP on loopback; one producer
process puts ITEMS bytes objects whose pickle is 512 bytes, one consumer process gets them.
Prints items per second, from the start signal to the consumer's last get.
"""
import multiprocessing as mp
import queue
import sys
import time
from multiprocessing.managers import BaseManager

from mp_bench import payload  # the same 512-byte pickle

KEY = b"procq-bench"
_queue = queue.Queue()


def get_queue():
    return _queue


class QueueManager(BaseManager):
    pass


def client(address):
    QueueManager.register("get_queue")
    m = QueueManager(address=address, authkey=KEY)
    m.connect()
    return m.get_queue()


def produce(address, count, ready, go):
    q = client(address)
    item = payload()
    ready.release()
    go.wait()
    for _ in range(count):
        q.put(item)


def consume(address, count, ready, done):
    q = client(address)
    ready.release()
    for _ in range(count):
        q.get()
    done.put(count)


def main():
    items = int(sys.argv[1])
    QueueManager.register("get_queue", callable=get_queue)
    manager = QueueManager(address=("127.0.0.1", 0), authkey=KEY)
    manager.start()
    go = mp.Event()
    ready = mp.Semaphore(0)
    done = mp.Queue()
    procs = [
        mp.Process(target=produce, args=(manager.address, items, ready, go)),
        mp.Process(target=consume, args=(manager.address, items, ready, done)),
    ]
    for p in procs:
        p.start()
    ready.acquire()  # both clients connected before timing starts
    ready.acquire()
    t0 = time.perf_counter()
    go.set()
    done.get()
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    manager.shutdown()
    print(f"{items / elapsed:.0f}")


if __name__ == "__main__":
    main()
