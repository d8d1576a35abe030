#!/usr/bin/python3
"""A stand-in for what PBS's MoMs do for a TM task, for tests/tests/pbs_nodes.rs.

Usage: tm_server.py CONFIG_JSON     (as root; runs until killed)

In PBS, `pbs_tmrsh HOST CMD ARGS...` (or pbsdsh, or an MPI launcher's TM spawn) asks its
MoM to spawn a task of the job on HOST's node; that node's MoM runs the execjob_launch hooks
on it (progname = the program, argv = the command and its arguments, env = the job's
environment plus PBS_NODENUM and PBS_TASKNUM), then forks, drops to the job's user and execs
what the hooks chose, stdin /dev/null (OpenPBS src/resmom/start_exec.c, start_process), and
reports the task's exit status back (tm_obit).

This server does the same for one job on the test's nodes (each node a process whose
namespaces stand for a machine: its mount, UTS and network namespace, entered with nsenter):
it listens on a unix socket for the stand-in pbs_tmrsh (tests/pbs/pbs_tmrsh.c; request: the
job's id, the host and the argv, each ending with a NUL, and the caller's stdout and stderr
as SCM_RIGHTS), and for each request, in the named node:
  1. runs the real hook on the execjob_launch event (pbs-hook/tests/mom_exec.py run-hook,
     as root, as MoM runs pbs_python). Each argument is stripped of leading and trailing
     blanks first, as PBS's hook input does (MoM writes argv as text lines, pbs_python strips
     them: docs/pbs-hook.md "What PBS itself cannot carry"). Open MPI's rsh launcher relies on
     it: it gives the daemon's name as " orted".
  2. execs the hook's result as the job's user (setpriv --reuid/--regid/--init-groups, then
     mom_exec.py exec: argv verbatim, the environment exactly the hook's, stdin /dev/null),
     its own session, writing to the caller's stdout and stderr;
  3. answers "exit N" with its exit status, or "fail MESSAGE" when the hook rejected it.

CONFIG_JSON:
  {"socket": "/path/tm.sock",
   "job": {"id": ..., "euser": ..., "Resource_List": {...}, "Variable_List": {...}},
   "env": {...},                      # the job's environment (what MoM gives every task)
   "config": {"slipway": ..., "policy": ...},   # the hook's configuration
   "nodes": [{"name": "pbsnode1", "pid": 123}, ...],  # in job order: PBS_NODENUM = index
   "user": "alice",
   "first_task": 2,                   # PBS_TASKNUM of the first TM task (the job script: 1)
   "work": "/root-owned/dir",         # where event and launch files go
   "mom_exec": "/path/pbs-hook/tests/mom_exec.py",
   "timeout": 60}                     # seconds a task may run

Every task is logged as one JSON line on stdout when it ends: {"task", "node", "host",
"argv" (as asked), "progname" and "hook_argv" (what the hook chose), "exit"}; "ready" is
printed once the socket listens.
"""

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading

PYTHON = "/usr/bin/python3"


class Mom:
    def __init__(self, conf):
        self.conf = conf
        self.lock = threading.Lock()
        self.next_task = conf.get("first_task", 2)
        self.out = threading.Lock()

    def task_number(self):
        with self.lock:
            n = self.next_task
            self.next_task += 1
            return n

    def log(self, record):
        with self.out:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def enter(self, node):
        """The command prefix that runs a program on `node` (all of its namespaces that
        stand for the machine)."""
        return ["nsenter", "-t", str(node["pid"]), "-m", "-u", "-n", "--"]

    def spawn(self, jobid, host, argv, out_fd, err_fd):
        """Runs one TM task; returns the answer line."""
        conf = self.conf
        if jobid != conf["job"]["id"]:
            return "fail job <%s> is not running here (TM_ENOTFOUND)" % jobid
        names = [n["name"] for n in conf["nodes"]]
        if host not in names:
            return 'fail host "%s" is not a node in job <%s>' % (host, jobid)
        if not argv:
            return "fail no command"
        nodenum = names.index(host)
        node = conf["nodes"][nodenum]
        task = self.task_number()
        # MoM -> pbs_python: one text line per argument, blanks around it stripped.
        hook_in = [a.strip(" \t") for a in argv]
        env = dict(conf["env"])
        env["PBS_NODENUM"] = str(nodenum)
        env["PBS_TASKNUM"] = str(task)
        event = {
            "event": "execjob_launch",
            "job": conf["job"],
            "progname": hook_in[0],
            "argv": hook_in,
            "env": env,
            "config": conf["config"],
        }
        base = os.path.join(conf["work"], "tm-%d" % task)
        with open(base + "-event.json", "w") as f:
            json.dump(event, f)
        hook = subprocess.run(
            self.enter(node) + [PYTHON, conf["mom_exec"], "run-hook", base + "-event.json"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
        record = {"task": task, "node": nodenum, "host": host, "argv": argv}
        if hook.returncode != 0:
            record["exit"] = "hook failed"
            self.log(record)
            return "fail the hook failed: %s" % hook.stderr.decode(errors="replace").strip()
        result = json.loads(hook.stdout)
        record["progname"] = result.get("progname")
        record["hook_argv"] = result.get("argv")
        if result.get("rejected"):
            record["exit"] = "rejected"
            self.log(record)
            msg = (result.get("message") or "").replace("\n", " ")
            return "fail rejected by the execjob_launch hook: %s" % msg
        launch = base + "-launch.json"
        with open(launch, "w") as f:
            json.dump(result, f)
        os.chmod(launch, 0o644)
        user = conf["user"]
        cmd = self.enter(node) + [
            "setpriv", "--reuid", user, "--regid", user, "--init-groups",
            PYTHON, conf["mom_exec"], "exec", launch,
        ]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out_fd, stderr=err_fd,
                             cwd="/", start_new_session=True,
                             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                  "PYTHONDONTWRITEBYTECODE": "1"})
        try:
            rc = p.wait(timeout=conf.get("timeout", 60))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            rc = p.wait()
        if rc < 0:
            rc = 128 - rc  # killed by a signal, as a shell reports it
        record["exit"] = rc
        self.log(record)
        return "exit %d" % rc


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
        try:
            chunks = [data]
            while True:
                more = sock.recv(1 << 16)
                if not more:
                    break
                chunks.append(more)
            fields = b"".join(chunks).split(b"\0")
            if len(fds) != 2 or len(fields) < 4 or fields[-1] != b"":
                answer = "fail bad request"
            else:
                words = [f.decode("utf-8", "surrogateescape") for f in fields[:-1]]
                try:
                    answer = self.server.mom.spawn(words[0], words[1], words[2:],
                                                   fds[0], fds[1])
                except Exception as e:  # the caller hears of it; the server goes on
                    answer = "fail %s: %s" % (type(e).__name__, e)
            sock.sendall((answer + "\n").encode())
        finally:
            for fd in fds:
                os.close(fd)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main(args):
    if len(args) != 1:
        sys.stderr.write(__doc__)
        return 2
    with open(args[0]) as f:
        conf = json.load(f)
    path = conf["socket"]
    if os.path.exists(path):
        os.unlink(path)
    server = Server(path, Handler)
    # The job's user connects: any local user may talk to a MoM (PBS checks the job's cookie).
    os.chmod(path, 0o666)
    server.mom = Mom(conf)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
