//! What Linux says about this process: resident memory, its peak, and CPU time by thread name.

use std::fs;

/// A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`), in MiB.
pub fn status_mib(field: &str) -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the peak resident size (`VmHWM`) to the current one, so that each run of a sweep
/// reports its own peak; false where the kernel does not allow it.
pub fn reset_peak_memory() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU seconds (user and system) of this process's live threads whose name starts with
/// `prefix`; of the whole process, dead threads included, when `prefix` is `None`.
pub fn cpu_seconds(prefix: Option<&str>) -> Option<f64> {
    let ticks = match prefix {
        None => ticks_of(&fs::read_to_string("/proc/self/stat").ok()?)?,
        Some(prefix) => {
            let mut total = 0;
            for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
                let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if comm.starts_with(prefix) {
                    let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    // A thread that ended between the listing and the read used no more.
                    total += ticks_of(&stat).unwrap_or(0);
                }
            }
            total
        }
    };
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// utime + stime of a `stat` line: fields 14 and 15, counted after the name, which is in
/// parentheses and may hold spaces.
fn ticks_of(stat: &str) -> Option<u64> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Raises the open-file limit to its hard limit, as `outerloop coordinator` does at start:
/// each worker costs this process two descriptors, its end and the coordinator's.
pub fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
