//! CPU time and resident memory of a process, from `/proc` (Linux), for the benchmarks' figures
//! and the tests that bound CPU use. Unreadable values read as 0. Each includer uses a subset.
#![allow(dead_code)]

/// User + system CPU seconds of `pid` (`None`: this process), at 100 ticks per second.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let (user, system) = user_system_seconds(pid);
    user + system
}

/// CPU seconds of the threads of `pid` (`None`: this process) whose name starts with `prefix`,
/// counting those alive now (a test can measure its own threads while other tests run in the
/// same process).
pub fn threads_cpu_seconds(pid: Option<u32>, prefix: &str) -> f64 {
    threads(pid, prefix)
        .iter()
        .map(|t| stat_cpu_seconds(&t.join("stat").display().to_string()))
        .sum()
}

/// How many threads of `pid` (`None`: this process) are named exactly `name`.
pub fn threads_named(pid: Option<u32>, name: &str) -> usize {
    threads(pid, name)
        .iter()
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim_end() == name))
        .count()
}

/// The `/proc` directories of `pid`'s threads whose name starts with `prefix`.
fn threads(pid: Option<u32>, prefix: &str) -> Vec<std::path::PathBuf> {
    let dir = pid.map_or("/proc/self/task".to_owned(), |p| format!("/proc/{p}/task"));
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|t| t.path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .collect()
}

fn stat_cpu_seconds(path: &str) -> f64 {
    let (user, system) = stat_user_system(path);
    user + system
}

/// User and system CPU seconds of `pid` (`None`: this process): how much of its time the
/// kernel spent on its behalf (system calls, and the network stack work they do).
pub fn user_system_seconds(pid: Option<u32>) -> (f64, f64) {
    let path = pid.map_or("/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    stat_user_system(&path)
}

fn stat_user_system(path: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) / 100.0, field(12) / 100.0)
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Resident KiB and count of `pid`'s mappings, grouped: anonymous ones by their size (thread
/// stacks show up as the 2 MiB group, the allocator's arenas as the 1 GiB one), `[heap]` and
/// the like by name, file-backed ones together. Largest first. For finding where resident
/// memory goes.
pub fn rss_breakdown(pid: u32) -> Vec<(String, u64, usize)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut groups: std::collections::BTreeMap<String, (u64, usize)> = Default::default();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut it = line.split_whitespace();
        let first = it.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let (lo, hi) = first.split_once('-').unwrap_or(("0", "0"));
            let size =
                u64::from_str_radix(hi, 16).unwrap_or(0) - u64::from_str_radix(lo, 16).unwrap_or(0);
            let path = it.nth(4).unwrap_or("");
            current = if !path.is_empty() {
                if path.starts_with('[') {
                    path.to_owned()
                } else {
                    "file".to_owned()
                }
            } else {
                format!("anon {} KiB", size >> 10)
            };
            groups.entry(current.clone()).or_default().1 += 1;
        } else if first == "Rss:" {
            let kib: u64 = it.next().and_then(|k| k.parse().ok()).unwrap_or(0);
            groups.entry(current.clone()).or_default().0 += kib;
        }
    }
    let mut v: Vec<_> = groups
        .into_iter()
        .map(|(k, (rss, n))| (k, rss, n))
        .collect();
    v.sort_by_key(|(_, rss, _)| std::cmp::Reverse(*rss));
    v
}
