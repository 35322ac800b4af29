"""Worker processes watched one job at a time, for jobs that may kill or hang their process.

multiprocessing.Pool cannot see a worker die (the OOM killer on a huge mesh): the run waits for that job's
result forever. Here each worker takes one job at a time through its own pipe and the parent waits on the
pipes and the processes together: a worker that dies fails only the job it held, one that overruns the time
limit is killed and fails its job, and either is replaced by a fresh worker for the jobs still to do. Each
worker runs `initializer` once, so per-process state (an OpenGL context) is reused for all its jobs.

    for job, result, lost in run_watched(func, jobs, workers=2, initializer=init, timeout=600):
        ...  # lost: None, or why the worker running `job` was lost
"""
import os
import signal
import time
from collections import deque
from multiprocessing.connection import wait

_READY = "ready"
_PARENT_CHECK_S = 1.0  # an idle worker looks this often whether its parent is still there


class WorkersCannotStart(RuntimeError):
    """A worker process died before it was ready: no job can run."""


def _serve(conn, func, initializer, initargs):
    """A worker's life: set up once, then run the jobs the parent sends until it sends None or is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    parent = os.getppid()  # the run, or the forkserver that dies with it
    if initializer is not None:
        initializer(*initargs)
    conn.send(_READY)
    while True:
        # Forked siblings hold copies of this pipe's other end, so a dead parent may never show as EOF.
        while not conn.poll(_PARENT_CHECK_S):
            if os.getppid() != parent:
                return
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(func(job))


def death_reason(exitcode):
    """Why a worker process ended, in words, from its exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the out-of-memory killer?)" if -exitcode == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {exitcode}"


class _Worker:
    def __init__(self, ctx, func, initializer, initargs):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, func, initializer, initargs), daemon=True)
        self.process.start()
        child.close()
        self.ready, self.busy, self.job, self.started = False, False, None, 0.0

    def give(self, job):
        """Send a job; False when the worker is already gone."""
        try:
            self.conn.send(job)
        except OSError:
            return False
        self.busy, self.job, self.started = job is not None, job, time.monotonic()
        return True

    def receive(self):
        """(message or None, why the worker was lost or None), without blocking."""
        try:
            if self.conn.poll():
                return self.conn.recv(), None
        except (EOFError, OSError):
            pass
        except Exception as e:  # a result that did not unpickle
            return None, f"worker result unreadable: {type(e).__name__}: {e}"
        if self.process.is_alive():
            return None, None
        self.process.join()
        return None, death_reason(self.process.exitcode)

    def close(self, grace=0.0):
        """Stop the process: it may take `grace` seconds to exit by itself, then it is killed."""
        self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_watched(func, jobs, workers, initializer=None, initargs=(), timeout=None, ctx=None):
    """Yield (job, func(job), None), or (job, None, why its worker was lost), for every job in the order
    they finish. func runs in a worker process and must return a picklable result. A worker is lost when it
    dies (killed by a signal, or exits) or overruns `timeout` seconds on one job (None: no limit); a new one
    takes its place. WorkersCannotStart when a worker dies before it is ready.
    Closing the generator kills the workers."""
    import multiprocessing as mp

    ctx = ctx or mp.get_context()
    todo, pool, retired = deque(jobs), [], []
    try:
        pool += [_Worker(ctx, func, initializer, initargs) for _ in range(min(workers, len(todo)))]
        while pool:
            busy = [w.started + timeout for w in pool if w.busy and timeout]
            wait([w.conn for w in pool] + [w.process.sentinel for w in pool],
                 max(0.0, min(busy) - time.monotonic()) if busy else None)
            for w in list(pool):
                message, lost = w.receive()
                if lost is None and message is None and w.busy and timeout \
                        and time.monotonic() - w.started > timeout:
                    lost = f"took longer than {timeout:g} s: worker stopped"
                if lost is not None:
                    pool.remove(w)
                    w.close()
                    if w.busy:
                        yield w.job, None, lost
                    elif not w.ready:
                        raise WorkersCannotStart(f"a worker process could not start: {lost}")
                    if todo:
                        pool.append(_Worker(ctx, func, initializer, initargs))
                    continue
                if message is None:
                    continue
                if not w.ready and message == _READY:
                    w.ready = True
                else:
                    job, w.busy, w.job = w.job, False, None
                    yield job, message, None
                if todo:
                    job = todo.popleft()
                    if not w.give(job):
                        todo.appendleft(job)  # the worker died idle: not the job's fault
                else:  # nothing left for it: it exits by itself, and is waited for at the end
                    w.give(None)
                    pool.remove(w)
                    retired.append(w)
    finally:
        for w in pool:
            w.close()
        for w in retired:
            w.close(grace=5.0)
