"""This process's resident memory from Linux's /proc/self/status: the benchmarks' CPU memory numbers."""


def status_bytes(field):
    """A /proc/self/status field given in kB (VmRSS now, VmHWM its peak), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def reset_peak_rss():
    """Sets VmHWM back to the current VmRSS, so a later peak is the measured code's own."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
