"""A stand-in for PBS's `pbs` hook module: exactly the part of its API that slipway_hook.py
uses, each piece behaving as OpenPBS's own code does. References are to the OpenPBS source
(github.com/openpbs/openpbs):

- Event and log constants: the values of src/include/hook.h (HOOK_EVENT_*, SEVERITY_LOG_*),
  exported by src/lib/Libpython/module_pbs_v1.c.
- pbs.event(): the current event; accept(ecode=0) and reject(emsg="", ecode=255) end the
  hook by raising SystemExit(str(ecode)) after which the event's parameters can no longer be
  changed (_event.accept/_event.reject in src/modules/python/pbs/v1/_svr_types.py).
- Event attributes: type, hook_name, job; progname, argv and env exist only on
  execjob_launch (reading them on another event raises EventIncompatibleError, an
  AttributeError: _event.__getattr__) and are the only ones a hook may set
  (_event.__setattr__). For a job script the hook sees progname = the user's shell and
  argv = [] (src/resmom/start_exec.c, finish_exec: the job has no argv); for a TM task and
  `qsub -- prog args`, progname = argv[0] and argv the task's (start_process; and
  decode_xml_arg_list in src/lib/Libifl/xml_encode_decode.c).
- What PBS takes back: progname through str(); argv must be a Python list of str
  (py_strlist_to_svrattrl in src/lib/Libpython/pbs_python_svr_internal.c uses
  PyList_Size and reads each item as a string); see outcome().
- job.Resource_List: reading a resource the server knows but the job did not ask for gives
  None; reading one the server does not know raises AttributeError (pbs_resource.__getitem__
  is getattr, src/modules/python/pbs/v1/_base_types.py). A boolean resource is a pbs_bool,
  whose str() is "1" or "0" and which defines no __bool__ (so it is always truthy).
- job.Variable_List: a dict of the job's variables (PBS_O_WORKDIR...); env: a dict
  (pbs_env) of the task's environment.
- pbs.logmsg(level, message): level must be a LOG_* or EVENT_* constant and message a str,
  else TypeError (pbsv1mod_meth_logmsg in src/lib/Libpython/common_python_utils.c). Here
  it records (level, message) in `log`.
- pbs.hook_config_filename: the path of the hook's imported config file, or None when none
  was imported (src/modules/python/pbs/v1/_svr_types.py: $PBS_HOOK_CONFIG_FILE).
- pbs.get_local_nodename(): the MoM's node name.

Tests set the scene with reset() and use_event(Event(...)).
"""

# src/include/hook.h
QUEUEJOB = 0x01
MODIFYJOB = 0x02
EXECJOB_BEGIN = 0x40
EXECJOB_END = 0x200
EXECJOB_LAUNCH = 0x800

LOG_DEBUG = 0x0005
LOG_WARNING = 0x0006
LOG_ERROR = 0x0007
# PBSEVENT_* (src/include/log.h), accepted by logmsg as levels too.
EVENT_ERROR = 0x0001
EVENT_SYSTEM = 0x0002
EVENT_ADMIN = 0x0004
EVENT_JOB = 0x0008
EVENT_DEBUG = 0x0080
EVENT_DEBUG2 = 0x0100
EVENT_DEBUG3 = 0x0200
EVENT_DEBUG4 = 0x0400

_LEVELS = (LOG_DEBUG, LOG_WARNING, LOG_ERROR, EVENT_ERROR, EVENT_SYSTEM, EVENT_ADMIN,
           EVENT_JOB, EVENT_DEBUG, EVENT_DEBUG2, EVENT_DEBUG3, EVENT_DEBUG4)

EVENT_NAMES = {
    "queuejob": QUEUEJOB,
    "modifyjob": MODIFYJOB,
    "execjob_begin": EXECJOB_BEGIN,
    "execjob_launch": EXECJOB_LAUNCH,
    "execjob_end": EXECJOB_END,
}

# The resources the server knows: PBS's built-in ones the tests use, and the ones
# setup-pbs.sh creates.
KNOWN_RESOURCES = ("ncpus", "mem", "select", "place", "walltime", "container",
                   "container_nv", "container_rocm", "container_mounts", "container_workdir")
BOOLEAN_RESOURCES = ("container_nv", "container_rocm")

hook_config_filename = None
log = []
_current = None
_nodename = "node1"


class EventIncompatibleError(AttributeError):
    pass


class BadAttributeValueError(Exception):
    pass


class pbs_bool(object):
    """A boolean resource value as hooks get it: str() is "1" or "0"; no __bool__."""

    def __init__(self, value):
        if value in ("true", "True", "TRUE", "t", "T", "y", "1", 1, True):
            self._value = 1
        elif value in ("false", "False", "FALSE", "f", "F", "n", "0", 0, False):
            self._value = 0
        else:
            raise BadAttributeValueError("bad boolean value %r" % (value,))

    def __str__(self):
        return str(self._value)

    __repr__ = __str__


class pbs_resource(object):
    """A job's Resource_List."""

    def __init__(self, values=None):
        self._values = {}
        for name, value in (values or {}).items():
            self[name] = value

    def __getitem__(self, name):
        if name not in KNOWN_RESOURCES:
            raise AttributeError("'pbs_resource' object has no attribute '%s'" % name)
        return self._values.get(name)

    def __setitem__(self, name, value):
        if name not in KNOWN_RESOURCES:
            raise AttributeError("resource attribute '%s' not found" % name)
        if value is not None and name in BOOLEAN_RESOURCES:
            value = pbs_bool(value)
        self._values[name] = value

    def __contains__(self, name):
        return name in KNOWN_RESOURCES


class pbs_env(dict):
    """The task's environment (a dict of name -> value)."""


class Job(object):
    def __init__(self, id="1.server", euser="alice", resources=None, variables=None):
        self.id = id
        self.euser = euser
        self.Resource_List = pbs_resource(resources)
        self.Variable_List = dict(variables or {})


class Event(object):
    """pbs.event(): one hook event."""

    def __init__(self, type, job=None, progname=None, argv=None, env=None,
                 hook_name="slipway"):
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "hook_name", hook_name)
        object.__setattr__(self, "job", job if job is not None else Job())
        param = {}
        if type == EXECJOB_LAUNCH:
            param = {"progname": progname, "argv": list(argv or []),
                     "env": pbs_env(env or {})}
        object.__setattr__(self, "_param", param)
        object.__setattr__(self, "_frozen", False)
        # What the hook decided: None (it ended without deciding: PBS accepts), True, False.
        object.__setattr__(self, "accepted", None)
        object.__setattr__(self, "reject_msg", None)

    def __getattr__(self, key):
        try:
            return self.__dict__["_param"][key]
        except KeyError:
            raise EventIncompatibleError('"%s" not found in self._param' % key)

    def __setattr__(self, name, value):
        if name in self._param and name in ("progname", "argv", "env"):
            if self._frozen:
                raise BadAttributeValueError("event attribute '%s' is readonly" % name)
            self._param[name] = value
            return
        raise BadAttributeValueError("event attribute '%s' is readonly" % name)

    def accept(self, ecode=0):
        object.__setattr__(self, "accepted", True)
        object.__setattr__(self, "_frozen", True)
        raise SystemExit(str(ecode))

    def reject(self, emsg="", ecode=255):
        object.__setattr__(self, "accepted", False)
        object.__setattr__(self, "reject_msg", emsg)
        object.__setattr__(self, "_frozen", True)
        raise SystemExit(str(ecode))


def event():
    if _current is None:
        raise RuntimeError("stand-in pbs: no event set (use_event)")
    return _current


def logmsg(level, message):
    if not isinstance(level, int) or level not in _LEVELS:
        raise TypeError("Invalid severity or eventtype value <%r>" % (level,))
    if not isinstance(message, str):
        raise TypeError("logmsg() argument 2 must be str, not %s" % type(message).__name__)
    log.append((level, message))


def get_local_nodename():
    return _nodename


# ---- for the tests ------------------------------------------------------------------------

def reset(config_filename=None, nodename="node1"):
    """A fresh scene: no event, an empty log, the config file PBS would name."""
    global hook_config_filename, _current, _nodename
    hook_config_filename = config_filename
    _current = None
    _nodename = nodename
    del log[:]


def use_event(ev):
    global _current
    _current = ev
    return ev


def outcome(ev):
    """What PBS takes from the event after the hook: a dict with accepted (an event the hook
    left without deciding is accepted), rejected, message, and for execjob_launch the
    progname, argv and env MoM goes on with. Raises TypeError where PBS would fail to read
    them back (argv not a list of str)."""
    out = {
        "accepted": ev.accepted is not False,
        "rejected": ev.accepted is False,
        "message": ev.reject_msg,
    }
    if ev.type == EXECJOB_LAUNCH:
        argv = ev._param["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise TypeError("argv must be a list of str, got %r" % (argv,))
        progname = ev._param["progname"]
        out["progname"] = None if progname is None else str(progname)
        out["argv"] = list(argv)
        out["env"] = dict(ev._param["env"])
    return out
