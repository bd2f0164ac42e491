//! The daemon's heap and the OS: how much of it glibc's allocator keeps.
//!
//! Loading thousands of programs allocates and frees far more than the daemon keeps (documents,
//! scans, plans), and glibc keeps freed memory in per-thread arenas rather than returning it: at
//! 10 000 programs the daemon's RSS was more than twice its live heap. So the daemon keeps one
//! arena (its allocations are few outside loading, and one arena held less free memory than two at
//! 10 000 programs and at 1000 running) and trims the heap once a load, a reload or a burst of the
//! reconcile loop has settled, and once a large response has been sent ([`ReleasedOnDrop`];
//! `docs/benchmarks.md`, memory).

/// Limits glibc's malloc arenas; call before any thread starts.
pub fn limit_arenas() {
    // SAFETY: `mallopt` only sets an allocator parameter; it is called before the runtime
    // starts any thread, with a valid parameter and value.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap memory to the OS. A few milliseconds for a large heap: called after a
/// load or a reload, never on a hot path.
pub fn release_freed() {
    // SAFETY: `malloc_trim` walks the allocator's own free lists under its locks; it takes no
    // pointer of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A large buffer (a response body) whose memory goes back to the OS once it is dropped: a
/// response of thousands of programs is megabytes that would otherwise stay resident, freed
/// in the middle of the heap after it was sent.
pub struct ReleasedOnDrop(Vec<u8>);

impl ReleasedOnDrop {
    /// From this many bytes on a buffer is worth the trim (a few milliseconds).
    pub const LARGE: usize = 1 << 20;

    pub fn new(bytes: Vec<u8>) -> ReleasedOnDrop {
        ReleasedOnDrop(bytes)
    }
}

impl AsRef<[u8]> for ReleasedOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ReleasedOnDrop {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.0));
        release_freed();
    }
}
