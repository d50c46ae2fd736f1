//! Which boot of the node last wrote a directory: the marker that lets the
//! local store write its state without an fsync per operation.
//!
//! The local store describes this node's pods, and a power cut (or a kernel
//! crash) takes every pod with it: their namespaces and veths live in
//! memory. So a state file written in an earlier boot describes nothing that
//! still exists, and if the cut left it torn or empty it may be set aside
//! instead of stopping every later ADD. What must never be set aside is a
//! file that is corrupt for another reason while its pods still run.
//!
//! The marker tells the two apart. Before the first unsynced write of a
//! boot into a directory, the store writes this boot's id (the kernel's
//! random `boot_id`) to `<dir>/boot` durably (data and directory fsynced,
//! once per boot and directory). Every later write of that boot is a plain
//! rename (atomic against a killed process; a live kernel never shows a
//! torn file). Hence, reading a corrupt state:
//!
//! | marker on disk | the state was | corrupt state is |
//! |---|---|---|
//! | another boot's id | written without fsync before a reboot | set aside (its pods are gone) |
//! | this boot's id | written atomically in this boot | an error for an operator |
//! | none (or unreadable) | only ever written with fsync | an error for an operator |
//!
//! A torn marker reads as another boot: it can only be torn by a cut after
//! it was written, which also means another boot.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

/// The kernel's random id of the running boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The marker's file name inside a network's directory.
pub(super) const MARKER: &str = "boot";

/// This boot's id, read once per process (a process never outlives its
/// boot). `None` when the kernel does not tell: then the store fsyncs every
/// write, as it did before the marker.
pub(super) fn this_boot() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string(BOOT_ID)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// What `<dir>/boot` says about the boot that last wrote `dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marker {
    /// No marker: the directory was only written with fsync (or never).
    Absent,
    /// Marked by the running boot: every write since was atomic.
    ThisBoot,
    /// Marked by an earlier boot (or torn by a cut): what was written
    /// then without fsync may be torn, and describes pods that are gone.
    AnotherBoot,
}

/// Reads `<dir>/boot` against the running boot's id.
pub(super) fn marker(dir: &Path) -> Marker {
    match fs::read(dir.join(MARKER)) {
        Err(_) => Marker::Absent,
        Ok(bytes) => match (this_boot(), std::str::from_utf8(&bytes)) {
            (Some(me), Ok(s)) if s.trim() == me => Marker::ThisBoot,
            _ => Marker::AnotherBoot,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_boot_has_an_id_and_markers_compare_against_it() {
        let me = this_boot().expect("Linux tells its boot id");
        assert_eq!(me.len(), 36, "a UUID: {me}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(marker(dir.path()), Marker::Absent);
        fs::write(dir.path().join(MARKER), format!("{me}\n")).unwrap();
        assert_eq!(marker(dir.path()), Marker::ThisBoot);
        fs::write(
            dir.path().join(MARKER),
            "00000000-0000-4000-8000-000000000000",
        )
        .unwrap();
        assert_eq!(marker(dir.path()), Marker::AnotherBoot);
        // Torn by a cut: empty, or garbage.
        fs::write(dir.path().join(MARKER), b"").unwrap();
        assert_eq!(marker(dir.path()), Marker::AnotherBoot);
        fs::write(dir.path().join(MARKER), [0u8; 36]).unwrap();
        assert_eq!(marker(dir.path()), Marker::AnotherBoot);
    }
}
