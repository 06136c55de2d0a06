"""multiprocessing.Queue baseline for procq's item-size benchmark (run by benches/sizes.rs).

Usage: python3 mp_sizes.py ITEMS SIZE
One producer process puts ITEMS bytes objects of SIZE bytes; one consumer process gets
them. Prints one line: items per second, timed from the start signal to the last get.
"""
import multiprocessing as mp
import sys
import time


def produce(q, count, size, start_evt):
    item = bytes(size)
    start_evt.wait()
    for _ in range(count):
        q.put(item)


def consume(q, count, done):
    for _ in range(count):
        q.get()
    done.put(count)


def main():
    items, size = int(sys.argv[1]), int(sys.argv[2])
    q = mp.Queue()
    done = mp.Queue()
    start_evt = mp.Event()
    producer = mp.Process(target=produce, args=(q, items, size, start_evt))
    consumer = mp.Process(target=consume, args=(q, items, done))
    producer.start()
    consumer.start()
    t0 = time.perf_counter()
    start_evt.set()
    total = done.get()
    elapsed = time.perf_counter() - t0
    producer.join()
    consumer.join()
    print(f"{total / elapsed:.1f}")


if __name__ == "__main__":
    main()
