//! The container's memory limit, as the kernel enforces it: the cgroup v2
//! `memory.max` or the cgroup v1 `memory.limit_in_bytes` of the cgroup the
//! process sees as its root (a container's own, under a cgroup namespace, as
//! Kubernetes runs containers). A leaf: read by `config` to size
//! `limits.max_connections` when `limits.memory` is not set.

use std::path::Path;

/// cgroup v2 (unified hierarchy): a byte count, or `max` for none.
pub const V2_MEMORY_MAX: &str = "/sys/fs/cgroup/memory.max";
/// cgroup v1: a byte count; "no limit" is a huge number (`LONG_MAX` rounded
/// down to a page, 9223372036854771712 on x86-64).
pub const V1_MEMORY_LIMIT: &str = "/sys/fs/cgroup/memory/memory.limit_in_bytes";

/// v1 limits at or above this are "no limit": no machine has 4 EiB, and the
/// kernel's unlimited value depends on the page size.
const V1_UNLIMITED_FROM: u64 = 1 << 62;

/// A memory limit and the file it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub file: &'static str,
}

/// The memory limit of this process's cgroup; `None` when there is none or
/// neither file can be read (not in a container, or not on Linux).
pub fn memory_limit() -> Option<MemoryLimit> {
    memory_limit_with(|file| std::fs::read_to_string(Path::new(file)).ok())
}

/// [`memory_limit`] reading files through `read`: v2 first, and v1 only
/// where there is no v2 file (a v2 `max` means no limit).
pub fn memory_limit_with(read: impl Fn(&'static str) -> Option<String>) -> Option<MemoryLimit> {
    if let Some(text) = read(V2_MEMORY_MAX) {
        return parse_v2(&text).map(|bytes| MemoryLimit {
            bytes,
            file: V2_MEMORY_MAX,
        });
    }
    read(V1_MEMORY_LIMIT)
        .and_then(|text| parse_v1(&text))
        .map(|bytes| MemoryLimit {
            bytes,
            file: V1_MEMORY_LIMIT,
        })
}

/// The contents of a v2 `memory.max`: `max` or a byte count.
pub fn parse_v2(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        number => number.parse().ok().filter(|&bytes| bytes > 0),
    }
}

/// The contents of a v1 `memory.limit_in_bytes`.
pub fn parse_v1(text: &str) -> Option<u64> {
    text.trim()
        .parse()
        .ok()
        .filter(|&bytes| bytes > 0 && bytes < V1_UNLIMITED_FROM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_reads_a_byte_count_or_max() {
        assert_eq!(parse_v2("134217728\n"), Some(128 << 20));
        assert_eq!(parse_v2("max\n"), None);
        assert_eq!(parse_v2(""), None);
        assert_eq!(parse_v2("0\n"), None);
        assert_eq!(parse_v2("lots\n"), None);
    }

    #[test]
    fn v1_reads_a_byte_count_and_its_unlimited_value_is_none() {
        assert_eq!(parse_v1("134217728\n"), Some(128 << 20));
        // x86-64 (4 KiB pages) and arm64 (64 KiB pages) "unlimited".
        assert_eq!(parse_v1("9223372036854771712\n"), None);
        assert_eq!(parse_v1("9223372036854710272\n"), None);
        assert_eq!(parse_v1("-1\n"), None);
        assert_eq!(parse_v1("\n"), None);
    }

    #[test]
    fn v2_is_read_first_and_its_max_is_final() {
        let files = |v2: Option<&'static str>, v1: Option<&'static str>| {
            move |file: &'static str| match file {
                V2_MEMORY_MAX => v2.map(String::from),
                V1_MEMORY_LIMIT => v1.map(String::from),
                other => panic!("unexpected file {other}"),
            }
        };
        assert_eq!(
            memory_limit_with(files(Some("67108864\n"), Some("134217728\n"))),
            Some(MemoryLimit {
                bytes: 64 << 20,
                file: V2_MEMORY_MAX
            })
        );
        assert_eq!(
            memory_limit_with(files(Some("max\n"), Some("134217728\n"))),
            None
        );
        assert_eq!(
            memory_limit_with(files(None, Some("134217728\n"))),
            Some(MemoryLimit {
                bytes: 128 << 20,
                file: V1_MEMORY_LIMIT
            })
        );
        assert_eq!(memory_limit_with(files(None, None)), None);
    }
}
