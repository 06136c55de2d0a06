"""multiprocessing baselines for procq's benchmark (run by benches/throughput.rs).

Usage: python3 mp_bench.py KIND ITEMS PRODUCERS CONSUMERS
KIND is queue (multiprocessing.Queue) or joinable (JoinableQueue, task_done per item).
Each item is a bytes object whose pickle is 512 bytes. Prints one line: items per second.
"""
import multiprocessing as mp
import pickle
import sys
import time


def payload():
    for n in range(400, 600):
        b = bytes(n)
        if len(pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL)) == 512:
            return b
    raise SystemExit("no payload size pickles to 512 bytes")


def produce(q, count, start_evt):
    item = payload()
    start_evt.wait()
    for _ in range(count):
        q.put(item)


def consume(q, count, joinable, done):
    got = 0
    for _ in range(count):
        q.get()
        if joinable:
            q.task_done()
        got += 1
    done.put(got)


def main():
    kind, items, producers, consumers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    joinable = kind == "joinable"
    q = mp.JoinableQueue() if joinable else mp.Queue()
    done = mp.Queue()
    start_evt = mp.Event()
    per_p = items // producers
    per_c = items // consumers
    procs = [mp.Process(target=produce, args=(q, per_p, start_evt)) for _ in range(producers)]
    procs += [mp.Process(target=consume, args=(q, per_c, joinable, done)) for _ in range(consumers)]
    for p in procs:
        p.start()
    t0 = time.perf_counter()
    start_evt.set()
    total = sum(done.get() for _ in range(consumers))
    if joinable:
        q.join()
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    print(f"{total / elapsed:.0f}")


if __name__ == "__main__":
    main()
