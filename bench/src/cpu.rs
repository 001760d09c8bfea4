//! CPU time a process on this machine has used, from `/proc`: what a server spends
//! per request, apart from what the load generator beside it spends.

use std::time::Duration;

/// Linux reports CPU times in USER_HZ ticks, 100 a second on every architecture.
const TICKS_PER_SECOND: u64 = 100;

/// The id of the process whose command name is `name` (the first one found).
pub fn find(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
}

/// User plus system time `pid` has used so far.
pub fn used(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // the state is the first, utime the twelfth and stime the thirteenth.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}
