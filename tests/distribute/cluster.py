"""Start a local multi-worker cluster: one process per worker on
127.0.0.1, ports chosen at run time, each with its own `TF_CONFIG`."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_ports(count):
    sockets = []
    try:
        for _ in range(count):  # all open at once: distinct ports
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    return json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    })


def run_workers(args, workers=2, timeout=300, env=None):
    """Runs `python *args` as `workers` tasks of one cluster; returns
    `[(returncode, output), ...]` in task order. A task still running after
    `timeout` seconds (a peer died: collectives wait) is killed, rc -9."""
    ports = free_ports(workers)
    processes = []
    for index in range(workers):
        task_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {}),
                    "TF_CONFIG": tf_config(ports, index)}
        processes.append(subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=task_env, cwd=ROOT,
        ))
    results = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            output, _ = process.communicate()
        results.append((process.returncode, output))
    return results


def result_line(output):
    """The JSON after `RESULT ` in a script's output."""
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError("no RESULT line in:\n" + output[-4000:])
