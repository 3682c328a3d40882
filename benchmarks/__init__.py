"""attnmon's performance suite: `python -m benchmarks` (or `make bench`).

Each figure is printed beside a bare reference measured in the same run, on the same
machine, so that the ratio means something on any box:

    observe() per call               beside  deque.append(arr.copy())
    background vectors/s             beside  a bare numpy entropy over the same vectors
    store rows/s through write_batch beside  raw psycopg COPY (raw sqlite3 executemany)
    bytes per window_aggregates row  against the 4 KB budget of DESIGN.md §4

Tests never assert timings; this is a report. Results go to benchmarks/results/.
"""
