"""The process behind a ProcessCollector: an AttentionCollector fed over a pipe.

Started by `collectors.process` as `python -m collectors.worker`. Frames (pickles, each
length-prefixed by `multiprocessing.connection`) come in on stdin and go out on a copy of
stdout; fd 1 itself is pointed at stderr, so that a stray print cannot break a frame.

In:  ("spec", kwargs)                 first: the AttentionCollector to run
     ("obs", [(size, pickled entry, [buffer sizes])], n)   queue entries (size: requests in
                                      each), n requests the parent dropped; then each
                                      entry's big arrays (pickle's out-of-band buffers),
                                      a frame each, in order
     ("flush", token)                 write everything; answer with the token
     ("close",)                       flush, stop, answer, exit
Out: ("stats", stats dict, token, ok, settled, told) about once a second (while a flush waits on
     the store too), after a flush or close, and last before exit (token None), however
     the worker was stopped; settled: requests written, rejected, dropped or in a spill
     file (what a worker killed then did not lose); told: the parent's drops received
     (stats has them), so that the parent counts those still on their way
     ("failed", message)              instead, when the spec cannot be loaded or run

End of input (the serving process exited or was killed) closes the collector, which
writes or spills what it holds, and exits. SIGTERM does the same; SIGINT is ignored, as
a Ctrl-C in a terminal reaches the whole process group and the parent decides.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import sys
import time
from multiprocessing.connection import Connection

from collectors.collector import AttentionCollector
from collectors.rarely import RareLog

STATS_EVERY_S = 1.0
FLUSH_TIMEOUT_S = 30.0  # as AttentionCollector.flush's

log = logging.getLogger("attnmon.collector")


class _Collector(AttentionCollector):
    """Counts what it writes back from its own spill files: a replayed batch is in both
    `spilled` and `written`, and the parent must not take it for two."""

    # other stores' batches in spill_dir: the ProcessCollector's own checks (its probe)
    # said so once when it was made, in the serving process's log; not again at each start
    _TELLS_OF_OTHER_STORES = False

    def _reset_state(self) -> None:
        super()._reset_state()
        self._spilled_batches: dict[int, int] = {}  # batch_seq -> requests, spilled, not replayed
        self.replayed = 0
        self.told = 0  # requests the parent said it dropped

    def _note_spilled(self, batch) -> None:
        super()._note_spilled(batch)
        self._spilled_batches[batch.batch_seq] = batch.n_requests

    def _note_written(self, batch) -> None:
        super()._note_written(batch)
        self.replayed += self._spilled_batches.pop(batch.batch_seq, 0)

    def _note_set_aside(self, batch) -> None:  # refused after it was spilled: dropped now
        self.replayed += self._spilled_batches.pop(batch.batch_seq, 0)


def _stats(c: _Collector, token: int | None, ok: bool) -> bytes:
    st = c.stats
    settled = st.written + sum(st.rejected.values()) + st.dropped + st.spilled - c.replayed
    return pickle.dumps(("stats", dataclasses.asdict(st), token, ok, settled, c.told), protocol=5)


def _flush(c: _Collector, conn_out: Connection, timeout: float = FLUSH_TIMEOUT_S) -> bool:
    """c.flush(), reporting while it waits on the store: the parent takes a worker that
    says nothing for its hang_after_s for hung, and kills it."""
    want = c._flush_ask()
    deadline = time.monotonic() + timeout
    while (done := c._flush_wait(want, STATS_EVERY_S)) is None:
        if time.monotonic() >= deadline:
            return False
        conn_out.send_bytes(_stats(c, None, True))
    return done


def serve(conn_in: Connection, conn_out: Connection) -> None:
    try:
        kind, spec = pickle.loads(conn_in.recv_bytes())
        if kind != "spec":
            raise ValueError(f"expected a spec first, got {kind!r}")
        c = _Collector(**spec)
    except EOFError:
        return  # the parent went before it said what to run
    except Exception as exc:  # (an option's value this process cannot import, say)
        # the parent logs it and starts no other: the next would fail the same way
        conn_out.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}"), protocol=5))
        raise SystemExit(3) from None
    log_rarely = RareLog(log)
    last = time.monotonic()
    try:
        while True:
            if time.monotonic() - last >= STATS_EVERY_S:
                conn_out.send_bytes(_stats(c, None, True))
                last = time.monotonic()
            if not conn_in.poll(STATS_EVERY_S):
                continue
            try:
                msg = pickle.loads(conn_in.recv_bytes())
            except (EOFError, OSError):  # the serving process is gone (OSError: in the middle
                return  # of a message): keep what it handed over
            if msg[0] == "obs":
                _, entries, dropped = msg
                if dropped:  # (the collector's thread takes them into its health rows)
                    c._drop(dropped)
                    c.told += dropped
                for n, raw, sizes in entries:
                    # its big arrays follow as frames of their own, into writable memory
                    buffers = [bytearray(size) for size in sizes]
                    try:
                        for buf in buffers:
                            conn_in.recv_bytes_into(buf)
                    except (EOFError, OSError):  # gone before its arrays had all come
                        return
                    try:
                        entry = pickle.loads(raw, buffers=buffers)
                    except Exception as exc:  # one call's values must not end the worker
                        c._drop(n)
                        log_rarely(logging.ERROR, "attnmon worker: a call's values could not be loaded "
                                   "(%s); dropped (counted)", exc)
                        continue
                    c._offer(entry, n)
            elif msg[0] == "flush":
                ok = _flush(c, conn_out)
                conn_out.send_bytes(_stats(c, msg[1], ok))
            elif msg[0] == "close":
                _flush(c, conn_out)
                c.close()
                conn_out.send_bytes(_stats(c, -1, True))
                return
    finally:
        c.close()
        try:  # the last word, however the loop ended: the parent counts what was written
            conn_out.send_bytes(_stats(c, None, True))
        except OSError:
            pass


def _terminate(*_) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let close() finish
    sys.exit(0)  # unwinds into serve's close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s attnmon-worker[%(process)d] %(levelname)s %(message)s")
    out_fd = os.dup(1)
    os.dup2(2, 1)
    conn_in, conn_out = Connection(0, writable=False), Connection(out_fd, readable=False)
    try:
        serve(conn_in, conn_out)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent stopped reading: it is exiting; close() above kept the data


if __name__ == "__main__":
    main()
