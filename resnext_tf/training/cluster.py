"""The workers of a multi-worker run: bounded failures, one resume point, a clean end.

MultiWorkerMirroredStrategy starts TensorFlow's coordination service on the first task (the
leader); `connect` configures it before the strategy exists, from one bound T (--worker_timeout):

- start-up: every task registers at a barrier within T, or every task stops;
- heartbeats: a task silent for T / 2 is lost; the service aborts the others' collectives,
  which then fail at once (a killed task's sockets usually fail them sooner);
- a watchdog thread stops the process when a task is lost, also while the worker is busy
  outside the collectives (writing a checkpoint, say): the leader asks its service for the
  tasks' states every few seconds, the other workers probe the leader;
- `agree_on_start`: before the first step the workers compare where they resume (one small
  all-gather of fixed size), so that workers that see different model_dirs stop with one line
  instead of training out of step;
- `ends_together`: a run that returns meets the other workers at a barrier, so that no worker
  leaves while another still runs (the leader would report it as crashed).

A lost worker stops every other one with a one-line WorkerLostError naming it, and the entry
points exit with EXIT_WORKER_LOST: rerunning the same command on every worker resumes from the
last checkpoint. Collective timeouts (CommunicationOptions.timeout_seconds) are not used: they
count from the moment a worker enters an all-reduce, so a peer that is only slow (the chief
writing a checkpoint, a shuffle buffer filling, a first XLA compilation) would stop the run.

TensorFlow has no public API for the coordination service; this module uses the eager
context's (tensorflow.python.eager.context), as MultiWorkerMirroredStrategy itself does.
"""

import functools
import os
import re
import sys
import threading
import time
from typing import NamedTuple

import tensorflow as tf
from tensorflow.python.eager import context

from resnext_tf import checkpoints
from resnext_tf.errors import EXIT_WORKER_LOST, WorkerLostError, report

# Jobs whose tasks train (and that the coordination service watches); evaluators do not.
TRAINING_JOBS = ("chief", "worker")
# Seconds between two questions of the watchdog to the coordination service (at most).
_POLL_SECONDS = 2.0
# The workers wait this many times --worker_timeout for each other at the end: the chief may
# still be exporting. A lost worker ends the wait sooner (heartbeats).
_END_WAIT_FACTOR = 10
_END_BARRIER = "resnext_tf/end"
_TASK_NAME = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")

_LOCK = threading.Lock()
_ACTIVE = None  # the Cluster of this process (a process creates one such strategy)


class Task(NamedTuple):
    job: str
    index: int
    address: str

    @property
    def device(self):
        return f"/job:{self.job}/replica:0/task:{self.index}"

    def __str__(self):
        return f"{self.job} {self.index} ({self.address})"


def training_tasks(cluster_spec):
    """The chief and worker tasks of a tf.train.ClusterSpec, chief first."""
    return [
        Task(job, index, cluster_spec.task_address(job, index))
        for job in TRAINING_JOBS
        if job in cluster_spec.jobs
        for index in range(cluster_spec.num_tasks(job))
    ]


def connect(worker_timeout, model_dir=None):
    """Creates the MultiWorkerMirroredStrategy of TF_CONFIG, with bounded failures.

    Args:
        worker_timeout: the bound T in seconds (see the module's docstring).
        model_dir: the run's folder, whose last checkpoint a lost-worker report names.

    Returns:
        The strategy. With fewer than two training tasks it is TensorFlow's plain one.

    Raises:
        WorkerLostError: when a task does not join within `worker_timeout` seconds.
    """
    global _ACTIVE
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    tasks = training_tasks(resolver.cluster_spec())
    if len(tasks) < 2 or resolver.task_type not in TRAINING_JOBS:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if _ACTIVE is not None:
        raise RuntimeError("A process joins one multi-worker cluster only (TensorFlow's limit).")
    cluster = Cluster(tasks, resolver.task_type, resolver.task_id, worker_timeout, model_dir)
    cluster.configure()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as e:
        raise WorkerLostError(cluster.not_joined_message(e)) from e
    _ACTIVE = cluster
    cluster.start_watchdog()
    return strategy


def active():
    """The Cluster this process belongs to, or None outside multi-worker runs."""
    return _ACTIVE


class Cluster:
    """The training tasks of one run as this process sees them, and its watchdog."""

    def __init__(self, tasks, job, index, worker_timeout, model_dir=None):
        self.tasks = tasks
        self.me = next(t for t in tasks if t.job == job and t.index == index)
        self.leader = tasks[0]
        self.timeout = float(worker_timeout)
        self.model_dir = model_dir
        self.heartbeat = self.timeout / 2
        self.poll = min(_POLL_SECONDS, self.timeout / 10)
        self._stop = threading.Event()
        self._ended = False  # set (under _LOCK) once the run ends or a report is under way
        self._last_answer = time.monotonic()  # when the leader or its service last answered
        self._threads = []

    @property
    def jobs(self):
        return [
            (job, sum(t.job == job for t in self.tasks))
            for job in TRAINING_JOBS
            if any(t.job == job for t in self.tasks)
        ]

    def configure(self):
        """Configures the coordination service that the strategy will start."""
        ctx = context.context()
        ms = int(self.timeout * 1000)
        ctx.configure_coordination_service(
            service_type="standalone",
            service_leader=self.leader.device,
            enable_health_check=True,
            cluster_register_timeout_in_ms=ms,
            heartbeat_timeout_in_ms=max(1000, ms // 2),
            shutdown_barrier_timeout_in_ms=ms,
        )
        config = ctx.coordination_service
        for job, count in self.jobs:
            config.coordinated_job_list.add(name=job, num_tasks=count)
        # Without it the leader waits for late tasks with no time limit (TensorFlow 2.21).
        config.cluster_register_with_barrier = True

    # ------------------------------------------------------------------------------ reports

    def _resume_hint(self):
        latest = None
        if self.model_dir:
            try:
                directory = os.path.join(self.model_dir, checkpoints.CHECKPOINT_SUBDIR)
                name, _ = checkpoints.pointer_target(directory, checkpoints.LATEST)
                latest = os.path.join(directory, name) if name else None
            except (OSError, ValueError):
                latest = None
        where = (
            f"the last checkpoint is {latest}"
            if latest
            else f"there is no checkpoint in model_dir={self.model_dir!r} yet"
        )
        return (
            f"This worker, {self.me}, stops; {where}. Rerun the same command on every worker "
            "to resume."
        )

    def not_joined_message(self, error):
        """The report of a start-up that timed out (`error` from the strategy)."""
        text = str(error)
        named = text.split("task names:", 1)[1] if "task names:" in text else ""
        missing = self._named(named)
        if not missing:
            missing = [self.leader] if self.me != self.leader else self._others()
        return (
            f"{_join(missing)} did not join the run within {self.timeout:g} s "
            f"(--worker_timeout). {self._resume_hint()}"
        )

    def lost_message(self, lost):
        """The report of lost tasks: a list of (Task, reason)."""
        described = "; ".join(f"{task}, which {reason}" for task, reason in lost)
        return f"Lost {described}. {self._resume_hint()}"

    def _named(self, text):
        found = []
        for job, index in _TASK_NAME.findall(text):
            task = next((t for t in self.tasks if t.job == job and t.index == int(index)), None)
            if task and task != self.me and task not in found:
                found.append(task)
        return found

    def _others(self):
        return [t for t in self.tasks if t != self.me]

    # ----------------------------------------------------------------------------- watchdog
    #
    # Calls that ask the leader (get_task_states, wait_at_barrier, setting a key) hold Python's
    # lock while they wait, and wait with no limit when the leader stops answering without
    # closing its connections (a hung or cut-off machine): every thread of the process would
    # stop with them. Only the leader asks its own service for the tasks' states; the other
    # workers probe the leader with TensorFlow's collective peer health check, which has a
    # time limit.

    @property
    def is_leader(self):
        return self.me == self.leader

    @property
    def probe_seconds(self):
        return min(5.0, max(1.0, self.timeout / 6))

    def start_watchdog(self):
        """Starts the thread that stops this process when a worker is lost."""
        self._last_answer = time.monotonic()
        thread = threading.Thread(target=self._watch, name="resnext_tf_watchdog", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _states(self):
        """(Task, reason) of the tasks the coordination service holds for lost (leader only)."""
        states = context.context().get_task_states(self.jobs)
        return [
            (task, _reason(status))
            for task, status in zip(self.tasks, states, strict=True)
            if status is not None and task != self.me
        ]

    def _watch(self):
        while not self._stop.wait(self.poll):
            if self.is_leader:
                try:
                    lost = self._states()
                except (tf.errors.OpError, ValueError):
                    continue
            else:
                lost = self._probe([self.leader])
                if not lost:
                    self._last_answer = time.monotonic()
                # The leader must stay silent for a heartbeat timeout before it counts as lost.
                elif time.monotonic() - self._last_answer <= self.heartbeat:
                    continue
            if lost:
                self._stop_now(WorkerLostError(self.lost_message(lost)))

    def _stop_now(self, error):
        # The main thread may be in a collective that nothing will end: report and exit here.
        with _LOCK:
            if self._ended:
                return
            self._ended = True
        self._stop.set()
        report(error)
        sys.stdout.flush()
        os._exit(EXIT_WORKER_LOST)

    def stop(self, join=True):
        """Stops the watchdog; `join` waits for its thread, so that none talks to TensorFlow
        while the process exits normally."""
        with _LOCK:
            self._ended = True
        self._stop.set()
        for thread in self._threads if join else ():
            thread.join(self.probe_seconds + self.poll + 1)

    # ---------------------------------------------------------------------------- diagnosis

    def lost_error(self, error, during="A collective between the workers"):
        """The WorkerLostError that `error` (from a collective or barrier) means, or None when
        it is not an error a lost worker causes."""
        text = str(error)
        if not isinstance(error, _PEER_ERRORS) and not any(m in text for m in _PEER_MARKS):
            self.stop()
            return None
        self.stop(join=False)  # the process exits soon after the report
        lost = self._probe(self._others())
        if not lost and self.is_leader:
            lost = self._wait_for_states()
        lost = lost or [(task, "is unreachable") for task in self._named(text)]
        if lost:
            return WorkerLostError(self.lost_message(lost))
        first = text.strip().splitlines()[0] if text.strip() else ""
        return WorkerLostError(
            f"{during} failed while every worker still answers ({type(error).__name__}: "
            f"{first}). {self._resume_hint()}"
        )

    def _probe(self, tasks):
        """(Task, reason) of the `tasks` that do not answer TensorFlow's collective peer health
        check within probe_seconds (all asked at once)."""
        wait, results = self.probe_seconds, {}

        def check(task):
            try:
                context.context().check_collective_ops_peer_health(
                    task.device, timeout_in_ms=int(wait * 1000)
                )
            except tf.errors.DeadlineExceededError:
                results[task] = f"does not answer (for {wait:g} s)"
            except tf.errors.OpError as e:
                results[task] = _reason(e)

        threads = [threading.Thread(target=check, args=(t,), daemon=True) for t in tasks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(wait + 1)
        return [(t, results[t]) for t in tasks if t in results]

    def _wait_for_states(self):
        """The lost tasks once the coordination service names them (within a heartbeat
        timeout of a loss), or [] when it names none in that time. Leader only."""
        deadline = time.monotonic() + self.heartbeat + self.poll
        while time.monotonic() < deadline:
            try:
                lost = self._states()
            except (tf.errors.OpError, ValueError):
                return []
            if lost:
                return lost
            time.sleep(self.poll)
        return []

    # --------------------------------------------------------------------------------- end

    def finish(self):
        """Waits until every worker has ended its run too (one barrier), then stops the
        watchdog.

        The leader announces its arrival in the service's key-value store first; the others
        wait for that announcement with short, bounded calls (the watchdog keeps probing the
        leader meanwhile) before they join the barrier, which the leader's service then ends
        at once.

        Raises:
            WorkerLostError: when a worker is lost before all arrive.
        """
        ctx, wait_s = context.context(), _END_WAIT_FACTOR * self.timeout
        try:
            if self.is_leader:
                ctx.set_config_key_value(_END_BARRIER, "1")
            else:
                deadline = time.monotonic() + wait_s
                while True:
                    try:
                        ctx.get_config_key_value(_END_BARRIER, int(self.poll * 1000))
                        break
                    except tf.errors.DeadlineExceededError:
                        if time.monotonic() > deadline:
                            raise
            ctx.wait_at_barrier(_END_BARRIER, int(wait_s * 1000))
        except tf.errors.OpError as e:
            lost = self.lost_error(e, during="Waiting for the other workers at the end")
            if lost is None:
                raise
            raise lost from e
        self.stop()


_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)
# Other errors count when their text says that the collectives or a barrier were aborted.
_PEER_MARKS = ("Collective ops is aborted", "heartbeat", "Barrier failed", "CoordinationService")


def _reason(status):
    """A short reason from a TensorFlow status or error about a task."""
    text = str(status).lower()
    if "heartbeat" in text:
        return "stopped sending heartbeats"
    if "connection refused" in text or "failed to connect" in text:
        return "refuses connections (its process is gone)"
    if "reset by peer" in text or "socket closed" in text:
        return "closed its connections (its process is gone)"
    if "restarted" in text or isinstance(status, tf.errors.FailedPreconditionError):
        return "restarted meanwhile"
    if isinstance(status, tf.errors.DeadlineExceededError):
        return "does not answer"
    return "is unreachable"


def _join(tasks):
    return ", ".join(str(t) for t in tasks)


def ends_together(run):
    """Decorates a function that runs a training (main.run).

    In a multi-worker run, an error of the collectives caused by a lost worker becomes a
    WorkerLostError naming it, and a run that returns waits for the other workers at a barrier.
    """

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        try:
            result = run(*args, **kwargs)
        except tf.errors.OpError as e:
            cluster = active()
            if cluster is None:
                raise
            lost = cluster.lost_error(e)
            if lost is None:
                raise
            raise lost from e
        except BaseException:
            if active() is not None:
                active().stop()
            raise
        if active() is not None:
            active().finish()
        return result

    return wrapper
