"""Why this process may not read another's memory, and what would let it.

The kernel's refusal (EACCES or EPERM at the open of /proc/PID/mem) names
neither the rule nor the remedy; :func:`refusal` reads the facts back from
/proc for the end of a one-line error.
"""

from __future__ import annotations

import os
import pwd

__all__ = ["YAMA_PTRACE_SCOPE", "exists", "hidden", "refusal", "task_state", "yama_ptrace_scope"]

#
# /proc/PID/mem is opened under ptrace's attach check (pagemap under its read
# check), which refuses, in the kernel's order: another user's process (any of
# its real, effective or saved ids not ours) without CAP_SYS_PTRACE; a process
# that is not dumpable (set-user-ID, or prctl(PR_SET_DUMPABLE, 0)), likewise;
# then Yama's ptrace_scope (1: only an ancestor, 2: only CAP_SYS_PTRACE, 3:
# nobody); then any other security module.  /proc mounted with hidepid hides
# or locks other users' /proc/PID before any of that.  The refusal itself
# says none of this (EACCES or EPERM), so the facts are read back from /proc.

YAMA_PTRACE_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"
_CAP_SYS_PTRACE = 19
_YAMA_RULE = {
    1: "only a process's ancestors may read it",
    2: "only a holder of CAP_SYS_PTRACE may read another process",
    3: "no process may read another",
}


def _status_fields(pid: int | str) -> dict[str, list[str]]:
    """/proc/PID/status as {key: its values}; empty if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    return {k: v.split() for k, _, v in (line.partition(":") for line in lines)}


def yama_ptrace_scope() -> int | None:
    """Yama's ptrace_scope now; None without Yama."""
    try:
        with open(YAMA_PTRACE_SCOPE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _has_cap(which: str) -> bool:
    """Whether this process's capability set ``which`` (CapEff, CapBnd) holds
    CAP_SYS_PTRACE."""
    caps = _status_fields("self").get(which, ["0"])
    return bool(int(caps[0], 16) >> _CAP_SYS_PTRACE & 1)


def _root_without_cap() -> str:
    """The remedy for a root that lacks CAP_SYS_PTRACE: "run as root" is no
    remedy to root; giving the capability back is, and how depends on whether
    it is still in the bounding set (a capsh --drop, setpriv or a container's
    defaults remove it from there, and nothing this process starts regains it)."""
    where = (
        "it is not in this process's bounding set (dropped by capsh --drop, setpriv "
        "--bounding-set, or a container's defaults): start it where CAP_SYS_PTRACE is kept"
        if not _has_cap("CapBnd")
        else "it is not in this process's effective set: run it with CAP_SYS_PTRACE raised"
    )
    return f"this process is root but lacks CAP_SYS_PTRACE (root needs it too, for this); {where}"


def exists(pid: int) -> bool:
    """Whether ``pid`` is a process, even one /proc will not show."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hidepid() -> str | None:
    """The hidepid= option of the /proc mounted last on /proc; None if unset."""
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[4] == "/proc" and fields[sep + 1] == "proc":
                    options = fields[sep + 3].split(",")
                    found = next((o[8:] for o in options if o.startswith("hidepid=")), None)
    except (OSError, ValueError, IndexError):
        return None
    return None if found in (None, "0", "off") else found


def hidden(pid: int) -> str | None:
    """The cause and remedy if /proc's hidepid keeps ``pid`` from this user."""
    hidepid = _hidepid()
    if hidepid is None or _status_fields(pid):
        return None
    return (
        f"/proc is mounted hidepid={hidepid}, which hides other users' processes; "
        "run as root or as the target's user (or in /proc's gid= group), "
        f"or with CAP_SYS_PTRACE ({_scope_said()})"
    )


def _scope_said() -> str:
    scope = yama_ptrace_scope()
    return f"{YAMA_PTRACE_SCOPE}: {'absent' if scope is None else scope}"


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _is_ancestor(pid: int) -> bool:
    me = os.getpid()
    for _ in range(1 << 16):  # a chain of parents ends at 1 (or 0); bounded anyway
        ppid = int(_status_fields(pid).get("PPid", ["0"])[0])
        if ppid == me:
            return True
        if ppid <= 1:
            return False
        pid = ppid
    return False


def refusal(pid: int) -> str:
    """Why this process may not read ``pid``'s memory, and what would let it,
    for the end of a one-line error (the kernel's refusal names neither).

    Ends with Yama's ptrace_scope as read now, the first thing to check on
    a machine where the cause is not plain; unless the process has ended
    meanwhile, which is said instead.  To root without CAP_SYS_PTRACE (a
    container, ``capsh --drop``), "run as root" is no remedy: it is told
    that it lacks the capability, and where it was dropped.
    """
    ended = f"the process ended while it was being opened (no process {pid} now)"
    # It may end between the refused open and now (or while its status is
    # read): its /proc entry, and so every fact below, is then gone, and no
    # rule is to blame.
    if not exists(pid):
        return ended
    found = hidden(pid)
    if found is not None:
        return found
    status = _status_fields(pid)
    if not status and not exists(pid):
        return ended
    scope = yama_ptrace_scope()
    cap = _has_cap("CapEff")
    euid, egid = os.geteuid(), os.getegid()
    uids = [int(u) for u in status.get("Uid", [])[:3]]
    gids = [int(g) for g in status.get("Gid", [])[:3]]
    other = next((u for u in uids if u != euid), None)
    remedy = "run as root, or with CAP_SYS_PTRACE"
    if not cap and other is not None:
        cause = f"it runs as {_user(other)}, this as {_user(euid)}"
        remedy = f"run as root or as {_user(other)} (its user), or with CAP_SYS_PTRACE"
        if euid == 0:
            remedy = f"{_root_without_cap()}, or run as {_user(other)} (its user)"
    elif not cap and any(g != egid for g in gids):
        cause = f"it runs with gid {next(g for g in gids if g != egid)}, this with gid {egid}"
    elif not cap and _dump_owner(pid) not in (euid, -1):
        cause = "it is not dumpable (set-user-ID, or prctl(PR_SET_DUMPABLE, 0))"
    elif scope == 3:
        cause = f"Yama forbids it: {_YAMA_RULE[3]}"
        remedy = "nothing can until the machine reboots (ptrace_scope 3 cannot be lowered)"
    elif scope == 2 and not cap:
        cause = f"Yama forbids it: {_YAMA_RULE[2]}"
    elif scope == 1 and not cap and not _is_ancestor(pid):
        cause = f"Yama forbids it: {_YAMA_RULE[1]}"
        remedy = "run as root, or with CAP_SYS_PTRACE, or lower ptrace_scope to 0"
    elif cap:
        cause, remedy = _refused_despite_cap(pid, status)
    else:
        cause = "refused by a security module (SELinux, AppArmor) or a user namespace"
    plain = "run as root, or with CAP_SYS_PTRACE"
    if euid == 0 and not cap and remedy.startswith(plain):
        remedy = _root_without_cap() + remedy[len(plain) :]
    return f"{cause}; {remedy} ({_scope_said()})"


# Linux's capability numbers, to name those a target holds and this process
# does not (include/uapi/linux/capability.h).
_CAP_NAMES = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
]
# The uid_map of the initial user namespace: every id mapped to itself.
_INITIAL_UID_MAP = ["0", "0", "4294967295"]


def _user_ns(pid: int | str) -> str | None:
    """``pid``'s user namespace (``user:[N]``); None where it may not be read,
    which for another's process is the same ptrace check that refused."""
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def _in_initial_user_ns() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == _INITIAL_UID_MAP
    except OSError:
        return False


def _refused_despite_cap(pid: int, status: dict[str, list[str]]) -> tuple[str, str]:
    """Cause and remedy when this process holds CAP_SYS_PTRACE and is still
    refused: "run as root, or with CAP_SYS_PTRACE" would send it in a circle.

    The kernel's capability check lets CAP_SYS_PTRACE read any process of a
    user namespace this process owns, so a refusal there comes from a
    security module (SELinux, AppArmor, Landlock); from a namespace below
    the target's, the capability does not reach it.  Which of the two is
    said only as far as /proc shows it: a target's namespace is behind the
    same check that refused.
    """
    mine, theirs = _user_ns("self"), _user_ns(pid)
    held = int(status.get("CapPrm", ["0"])[0], 16)
    ours = int(_status_fields("self").get("CapPrm", ["0"])[0], 16)
    lacking = [f"cap_{name}" for bit, name in enumerate(_CAP_NAMES) if (held & ~ours) >> bit & 1]
    extra = (
        f"; it is permitted capabilities this one is not ({', '.join(lacking)})" if lacking else ""
    )
    module = "a security module (SELinux, AppArmor, Landlock) forbids it"
    if theirs is not None and theirs != mine:
        return (
            f"refused though this process holds CAP_SYS_PTRACE: the target is in another "
            f"user namespace ({theirs}, this one {mine}), which the capability may not "
            f"reach, or {module}{extra}",
            "run the shadow in the target's user namespace or an ancestor of it (the host), "
            "or let the security module allow ptrace reads of it",
        )
    if theirs == mine or _in_initial_user_ns():
        return (
            f"refused though this process holds CAP_SYS_PTRACE in the initial user "
            f"namespace (or the target's): {module}{extra}",
            "let the security module's policy allow ptrace reads of it, or run the shadow "
            "outside the sandbox it confines",
        )
    return (
        f"refused though this process holds CAP_SYS_PTRACE: this process is in a user "
        f"namespace of its own ({mine}), which the capability may not reach beyond, or "
        f"{module}{extra}",
        "run the shadow in the target's user namespace or an ancestor of it (the host), "
        "or let the security module allow ptrace reads of it",
    )


def _dump_owner(pid: int) -> int:
    """The owner /proc gives ``pid``'s files: its user, or root if not dumpable
    (/proc/PID itself, a directory, keeps its user either way); -1 if unknown."""
    try:
        return os.stat(f"/proc/{pid}/mem").st_uid
    except OSError:
        return -1


def task_state(base: str) -> str | None:
    """The state letter in ``base``/stat (after the name, which may hold
    anything); None if it cannot be read."""
    try:
        with open(f"{base}/stat", "rb") as f:
            raw = f.read()
        return chr(raw[raw.rindex(b")") + 2])
    except (OSError, ValueError, IndexError):
        return None
