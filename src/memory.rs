//! The daemon's heap and the OS: how much of it glibc's allocator keeps.
//!
//! Loading thousands of programs allocates and frees far more than the daemon keeps (documents,
//! scans, plans), and glibc keeps freed memory in per-thread arenas rather than returning it: at
//! 10 000 programs the daemon's RSS was more than twice its live heap. So the daemon keeps one
//! arena (its allocations are few outside loading, and one arena held less free memory than two at
//! 10 000 programs and at 1000 running) and trims the heap once a load, a reload or a burst of the
//! reconcile loop has settled (`docs/benchmarks.md`, memory).

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
