"""The hospital's SuperNode, quick: Flower's own SuperNode with short waits and one long-lived ClientApp.

Stock Flower 1.42 makes every deployed round take seconds at each hospital: an idle SuperNode
sleeps 3 s between pulls, polls for the ClientApp's reply every 0.5 s, and its SuperExec starts a
fresh `flwr-clientapp` process (~1.5 s of imports) for every message. `workbench node start`
therefore runs, in one process:

- Flower's SuperNode (`flower-supernode --isolation process`), whose waits are shortened: an idle
  node pulls again after 100 ms for 15 s after its last message (a study's rounds follow each other
  closely), then backs off to Flower's 3 s; it checks for the reply every 20 ms, and retries a
  message object still on its way after 10 ms (Flower: 1 s, doubling);
- in place of Flower's SuperExec, a worker thread that takes each task from the SuperNode's
  runtime API and runs the workbench's ClientApp in this process (its imports paid once). It runs
  nothing else: a task whose app is not the workbench's ClientApp fails with that reason, so a
  coordinator cannot make a hospital node run code the hospital did not install.

Both rely on Flower internals. They were built and tested for Flower `FLOWER_TESTED`; `problems()`
says why they cannot run with what is installed, and `workbench node start` then starts stock
Flower (with its SuperExec's task poll at 50 ms and telemetry off) after a one-line notice.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from workbench.messages import FLOWER_TESTED

CLIENT_APP = "hospital_node.client_app:app"
"""The only ClientApp this node runs (the component the workbench's Flower app declares)."""

log = logging.getLogger(__name__)


def problems() -> str:
    """Why the quick runtime cannot run with the installed Flower ("" when it can)."""
    try:
        import flwr
        from flwr.supernode import start_client_internal as loop

        if flwr.__version__ != FLOWER_TESTED:
            return f"Flower {flwr.__version__} is installed; the quick node runtime is tested with {FLOWER_TESTED}"
        _internals()
        if not callable(getattr(loop, "pull_objects", None)):
            return "Flower's SuperNode loop no longer pulls message objects where the quick runtime expects"
        waits = inspect.getsource(loop.start_client_internal) + inspect.getsource(loop._push_messages)
        if "time.sleep(3)" not in waits or "time.sleep(0.5)" not in waits:
            return "Flower's SuperNode loop no longer waits where the quick runtime expects"
    except (ImportError, AttributeError, OSError, TypeError) as error:
        return f"a Flower internal the quick node runtime needs is missing ({error})"
    return ""


def run(arguments: Sequence[str]) -> None:
    """Run the SuperNode with `arguments` (flower-supernode's), quick waits and the in-process ClientApp worker."""
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli.flower_supernode import flower_supernode

    port = arguments[list(arguments).index("--port") + 1]
    loop.time = _Waits()  # type: ignore[attr-defined]  # the module's `time`, as its loop sees it
    loop.pull_objects = functools.partial(loop.pull_objects, initial_backoff=0.01, backoff_cap=0.2)  # type: ignore[attr-defined]
    threading.Thread(target=_work, args=(f"127.0.0.1:{port}",), name="workbench-clientapp", daemon=True).start()
    print(f"node: quick runtime (Flower {FLOWER_TESTED} internals): short waits, the workbench's ClientApp in this "
          "process", file=sys.stderr, flush=True)  # fmt: skip
    sys.argv = ["flower-supernode", *arguments, "--isolation", "process"]
    flower_supernode()


class _Waits:
    """Stands in for the `time` module inside Flower's SuperNode loop: shorter sleeps, everything else unchanged."""

    def __init__(self) -> None:
        self.idle = _Idle()

    def sleep(self, seconds: float) -> None:
        if seconds >= 3:  # nothing to pull: 100 ms while a study is likely running, then back to Flower's 3 s
            time.sleep(min(seconds, self.idle.wait(0.1)))
        else:  # waiting for the ClientApp's reply
            self.idle.reset()
            time.sleep(min(seconds, 0.02))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _Idle:
    """A poll interval that stays short for `QUIET` seconds after the last activity, then grows 1.5× per poll."""

    QUIET = 15.0

    def __init__(self) -> None:
        self.since, self.polls = time.monotonic(), 0

    def reset(self) -> None:
        self.since, self.polls = time.monotonic(), 0

    def wait(self, short: float, longest: float = 3.0) -> float:
        if time.monotonic() - self.since < self.QUIET:
            return short
        self.polls += 1
        return min(longest, short * 1.5**self.polls)


def _internals() -> dict[str, Any]:
    """The Flower internals the worker uses (raises ImportError or AttributeError when one is gone)."""
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    return {"ErrorCode": ErrorCode, "SubStatus": SubStatus,
            "AcquireTaskRequest": AcquireTaskRequest, "client_app_task": TaskType.CLIENT_APP,
            "HeartbeatSender": HeartbeatSender, "heartbeat": make_task_heartbeat_fn_http,
            "token": RuntimeTokenHttpInterceptor, "version": RuntimeVersionHttpInterceptor,
            "retry": make_simple_http_retry_invoker, "client": RuntimeHttpClient.from_server_address,
            "pull": _pull_input, "push": push_message, "output": push_task_output}  # fmt: skip


def _pull_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """The task's message, context, run and FAB, as Flower's ClientApp process pulls them, with a 10 ms retry.

    The SuperNode offers a task before it has all of the message's objects from the SuperLink; Flower's
    own pull waits 1 s before asking again (its fresh process rarely gets there that early).
    """
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    task = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = (
        task.task_id,
        task.run.run_id,
        task.context.node_id,
    )
    context = context_from_proto(task.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode offered a task without a message")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=0.01,
        backoff_cap=0.2,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # a deflated message does not carry its own id
    return message, context, run_from_proto(task.run), fab_from_proto(task.fab)


def _work(address: str) -> None:
    """Take ClientApp tasks from the runtime API at `address`, one at a time, and run them here."""
    from hospital_node.client_app import app

    flwr = _internals()
    acquire = _client(flwr, address, flwr["version"](component_name="SuperExec"))
    idle = _Idle()
    while True:
        try:
            found = acquire.AcquireTask(flwr["AcquireTaskRequest"](supported_task_types=[flwr["client_app_task"]]))
        except Exception:  # the runtime API is not up yet, or restarting
            time.sleep(0.2)
            continue
        if found.HasField("task") and found.token:
            try:
                _task(flwr, address, found.token, app)
            except Exception:  # e.g. the runtime API gone mid-task: that task is lost, the worker serves on
                log.exception("ClientApp task could not be completed")
            idle.reset()
            continue
        time.sleep(idle.wait(0.03, longest=1.0))


def _task(flwr: dict[str, Any], address: str, token: str, app: Any) -> None:
    """One ClientApp task: pull its message and context, answer it with the workbench's ClientApp, push both back."""
    from flwr.app import Error, Message

    client = _client(flwr, address, flwr["version"](component_name="flwr-clientapp"), flwr["token"](token))
    heartbeat = flwr["HeartbeatSender"](flwr["heartbeat"](client))
    heartbeat.start()
    message = context = reply = None
    status, details = flwr["SubStatus"].FAILED, "the task failed"
    try:
        message, context, _, fab = flwr["pull"](client)
        foreign = foreign_app(fab.content)
        if foreign:
            raise PermissionError(foreign)
        reply = app(message=message, context=context)
        status, details = flwr["SubStatus"].COMPLETED, ""
    except Exception as error:  # the node keeps serving; the coordinator gets the reason
        log.exception("ClientApp task failed")
        details = f"{type(error).__name__}: {error}"
        if message is not None:
            reply = Message(Error(code=flwr["ErrorCode"].CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                try:
                    flwr["push"](client, reply, context)
                except Exception as error:  # still report the task's end, so the SuperNode does not wait for it
                    log.exception("the ClientApp's reply could not be pushed")
                    status, details = flwr["SubStatus"].FAILED, f"{type(error).__name__}: {error}"
            flwr["output"](client, context, status, details)
        finally:
            heartbeat.stop()
            client.close()


def foreign_app(fab: bytes) -> str:
    """Why this node will not run the Flower app bundle `fab` ("" when its ClientApp is the workbench's)."""
    from flwr.common.config import get_fab_config

    try:
        declared = get_fab_config(fab)["tool"]["flwr"]["app"]["components"].get("clientapp")
    except (KeyError, ValueError, OSError) as error:
        return f"this hospital node runs only the workbench's ClientApp; the app bundle cannot be read ({error})"
    return "" if declared == CLIENT_APP else f"this hospital node runs only the workbench's ClientApp, not '{declared}'"


def _client(flwr: dict[str, Any], address: str, *interceptors: Any) -> Any:
    return flwr["client"](server_address=address, insecure=True, root_certificates=None,
                          interceptors=list(interceptors), retry_invoker=flwr["retry"]())  # fmt: skip


if __name__ == "__main__":
    run(sys.argv[1:])
